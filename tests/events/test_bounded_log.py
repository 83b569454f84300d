"""No record over the maximum event size reaches the log, and a refused call writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from aob.events.log.bounded import BoundedEventLog, EventTooLarge, oversize
from aob.events.log.port import Append, TopicPartition
from aob.events.log.sqlite import SqliteEventLog

MAX = 1000


async def test_an_oversize_record_is_refused_and_nothing_of_its_call_is_appended(
    tmp_path: Path,
) -> None:
    log = BoundedEventLog(await SqliteEventLog.open(tmp_path / "log.db"), MAX)
    try:
        await log.create_topic("t", 1)
        small, big = Append("t", "k", b"x" * MAX), Append("t", "k", b"x" * (MAX + 1))
        with pytest.raises(EventTooLarge, match=r"1001 bytes for t .*AOB_MAX_EVENT_BYTES"):
            await log.append([small, big])
        with pytest.raises(EventTooLarge):
            await log.append_and_commit([big], "g", {TopicPartition("t", 0): 5})
        assert await log.end_offsets("t") == {0: 0}
        assert await log.committed("g", "t") == {0: 0}
        assert [r.offset for r in await log.append([small])] == [0]
    finally:
        await log.close()


def test_oversize_names_the_first_record_over_the_maximum() -> None:
    assert oversize([Append("t", "k", b"1" * MAX)], MAX) is None
    problem = oversize([Append("a", "k", b""), Append("b", "k", b"1" * (MAX + 5))], MAX)
    assert problem is not None
    assert problem.startswith("an event of 1005 bytes for b")
