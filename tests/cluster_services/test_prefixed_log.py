"""Installations sharing one log under topic prefixes see nothing of each other."""

from __future__ import annotations

from pathlib import Path

from aob.events.log.port import Append, TopicPartition
from aob.events.log.prefixed import PrefixedEventLog
from aob.events.log.sqlite import SqliteEventLog


async def test_prefixed_installations_share_a_log_without_seeing_each_other(
    tmp_path: Path,
) -> None:
    shared = await SqliteEventLog.open(tmp_path / "log.db")
    blue, green = PrefixedEventLog(shared, "blue."), PrefixedEventLog(shared, "green.")
    try:
        for log in (blue, green):
            await log.create_topic("aob.runs", 2)
        [record] = await blue.append([Append("aob.runs", "run_1", b"blue")])
        await blue.commit("aob-projector", {TopicPartition("aob.runs", record.partition): 1})

        assert record.topic == "aob.runs"  # plain names above the prefix
        assert await blue.read("aob.runs", record.partition, 0) == [record]
        assert await green.read("aob.runs", record.partition, 0) == []
        assert sum((await green.end_offsets("aob.runs")).values()) == 0
        assert (await green.committed("aob-projector", "aob.runs"))[record.partition] == 0
        assert (await blue.committed("aob-projector", "aob.runs"))[record.partition] == 1
        # Underneath, the names carry the prefix.
        assert (await shared.read("blue.aob.runs", record.partition, 0))[0].value == b"blue"
        committed = await shared.committed("blue.aob-projector", "blue.aob.runs")
        assert committed[record.partition] == 1
    finally:
        await shared.close()
