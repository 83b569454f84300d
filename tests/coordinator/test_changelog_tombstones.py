"""On Kafka, a finished run's changelog keys end in real tombstones (null values), the
only records the broker's compaction deletes keys for: an empty value would be kept
forever as a live record.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition as KafkaPartition

from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append
from aob.events.log.prefixed import PrefixedEventLog
from aob.events.types import DEADLETTER_TOPIC, EXPRESSIONS_TOPIC, RUNS_TOPIC, task_topic
from aob.projections.runtime.changelog import CHANGELOG_TOPIC, create_changelog, read_partition
from aob.projections.runtime.coordinator import CoordinatorHost
from tests.coordinator.test_changelog_restore import PARTITIONS, finish_runs


@pytest.fixture
async def kafka(kafka_bootstrap: str) -> AsyncIterator[tuple[KafkaEventLog, str]]:
    async with await KafkaEventLog.open(kafka_bootstrap) as inner:
        yield inner, f"tombstones-{uuid.uuid4().hex[:8]}."


async def raw_records(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every committed record of `topic` as the broker holds it (values as sent)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [KafkaPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records += batch
        return records
    finally:
        await consumer.stop()


async def test_an_empty_value_is_appended_as_a_null_and_a_restore_ignores_the_key(
    kafka: tuple[KafkaEventLog, str],
) -> None:
    inner, prefix = kafka
    event_log = PrefixedEventLog(inner, prefix)
    await create_changelog(event_log, 1)
    await event_log.append([Append(CHANGELOG_TOPIC, "run-1", b"not a state")])
    await event_log.append([Append(CHANGELOG_TOPIC, "run-1", b"")])

    raw = await raw_records(inner.bootstrap, prefix + CHANGELOG_TOPIC, 1)
    assert [(r.key, r.value) for r in raw] == [(b"run-1", b"not a state"), (b"run-1", None)]
    assert [r.value for r in await event_log.read(CHANGELOG_TOPIC, 0, 0)] == [b"not a state", b""]
    restored = await read_partition(event_log, 0)
    assert restored.states == {}  # the key's latest record deletes it


async def test_a_finished_runs_keys_end_in_nulls_written_by_the_fenced_commit(
    kafka: tuple[KafkaEventLog, str],
) -> None:
    inner, prefix = kafka
    event_log = PrefixedEventLog(inner, prefix)
    for topic in (RUNS_TOPIC, task_topic("work"), EXPRESSIONS_TOPIC, DEADLETTER_TOPIC):
        await event_log.create_topic(topic, PARTITIONS)
    await create_changelog(event_log, PARTITIONS)
    # Every batch writes the changelog: with the default interval a run that starts
    # and ends between two writes is never stored, and how many are depends on timing.
    host = CoordinatorHost(event_log, changelog_interval=0)
    await host.recover()
    try:
        runs = await finish_runs(event_log, host, 8)
    finally:
        await host.close()

    raw = await raw_records(inner.bootstrap, prefix + CHANGELOG_TOPIC, PARTITIONS)
    latest = {r.key.decode(): r.value for r in raw}
    keys_of_runs = {k: v for k, v in latest.items() if k.split("/")[0] in runs}
    # Each run's core, submission and output of `a`: all deleted.
    assert len(keys_of_runs) == 3 * len(runs)
    assert set(keys_of_runs.values()) == {None}
