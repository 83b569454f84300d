"""The EventLog port's semantics, which every adapter must pass (see conftest.ADAPTERS)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

import pytest

from aob.events.log.port import (
    Append,
    EventLog,
    LogError,
    Record,
    TopicPartition,
    UnknownTopic,
)
from aob.events.partitioner import partition_for

Unique = Callable[[str], str]


async def read_all(log: EventLog, topic: str, partition: int) -> list[Record]:
    out: list[Record] = []
    while batch := await log.read(topic, partition, len(out), max_records=100):
        out.extend(batch)
    return out


# --- topics ----------------------------------------------------------------------------


async def test_create_topic_is_idempotent(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 3)
    await event_log.create_topic(topic, 3)
    await event_log.create_topic(topic, 7)  # an existing topic is left as it is
    assert await event_log.partitions(topic) == 3
    assert await event_log.end_offsets(topic) == {0: 0, 1: 0, 2: 0}


@pytest.mark.parametrize("partitions", [0, -1])
async def test_a_topic_needs_a_partition(
    event_log: EventLog, unique: Unique, partitions: int
) -> None:
    with pytest.raises(LogError):
        await event_log.create_topic(unique("t"), partitions)


@pytest.mark.parametrize("name", ["", "has space", "slash/y", "colon:y", "x" * 250, ".."])
async def test_topic_names_follow_kafkas_rules(event_log: EventLog, name: str) -> None:
    with pytest.raises(LogError):
        await event_log.create_topic(name, 1)


async def test_unknown_topic_is_reported_everywhere(event_log: EventLog, unique: Unique) -> None:
    topic = unique("missing")
    with pytest.raises(UnknownTopic):
        await event_log.partitions(topic)
    with pytest.raises(UnknownTopic):
        await event_log.append([Append(topic, "k", b"v")])
    with pytest.raises(UnknownTopic):
        await event_log.read(topic, 0, 0)
    with pytest.raises(UnknownTopic):
        await event_log.end_offsets(topic)
    with pytest.raises(UnknownTopic):
        await event_log.committed(unique("g"), topic)
    with pytest.raises(UnknownTopic):
        await event_log.commit(unique("g"), {TopicPartition(topic, 0): 1})


async def test_unknown_topic_is_a_log_error() -> None:
    assert issubclass(UnknownTopic, LogError)


async def test_reading_a_partition_that_does_not_exist_fails(
    event_log: EventLog, unique: Unique
) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 2)
    with pytest.raises(LogError):
        await event_log.read(topic, 2, 0)


# --- appends -----------------------------------------------------------------------------


async def test_append_returns_positions_in_order(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 4)
    before = time.time_ns() // 1_000_000
    appends = [Append(topic, f"key-{i % 3}", f"value-{i}".encode()) for i in range(10)]
    records = await event_log.append(appends)
    after = time.time_ns() // 1_000_000

    assert [(r.topic, r.key, r.value) for r in records] == [
        (a.topic, a.key, a.value) for a in appends
    ]
    for record in records:
        assert record.partition == partition_for(record.key, 4)
        assert record.position == TopicPartition(topic, record.partition)
        assert before - 1000 <= record.timestamp <= after + 1000


async def test_empty_append_appends_nothing(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 2)
    assert await event_log.append([]) == []
    assert await event_log.end_offsets(topic) == {0: 0, 1: 0}


async def test_a_key_always_lands_in_kafkas_partition(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 12)
    keys = [f"run-{i}" for i in range(40)] + ["", "h\u00e9llo", "\U0001f642"]
    for _ in range(3):
        records = await event_log.append([Append(topic, key, b"x") for key in keys])
        assert [r.partition for r in records] == [partition_for(key, 12) for key in keys]


async def test_offsets_are_dense_per_partition(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 3)
    appended: list[Record] = []
    for i in range(0, 60, 7):  # batches of assorted sizes
        appended += await event_log.append(
            [Append(topic, f"k{j}", str(j).encode()) for j in range(i, min(i + 7, 60))]
        )
    by_partition: dict[int, list[int]] = defaultdict(list)
    for record in appended:
        by_partition[record.partition].append(record.offset)
    for offsets in by_partition.values():
        assert offsets == list(range(len(offsets)))
    ends = await event_log.end_offsets(topic)
    assert ends == {p: len(by_partition.get(p, [])) for p in range(3)}
    for partition in range(3):
        assert await read_all(event_log, topic, partition) == [
            r for r in appended if r.partition == partition
        ]


async def test_concurrent_appends_get_distinct_dense_offsets(
    event_log: EventLog, unique: Unique
) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 4)

    async def producer(n: int) -> list[Record]:
        out: list[Record] = []
        for i in range(20):
            out += await event_log.append([Append(topic, f"p{n}-{i % 4}", f"{n}:{i}".encode())])
        return out

    results = await asyncio.gather(*(producer(n) for n in range(25)))
    appended = [r for rs in results for r in rs]
    assert len({(r.partition, r.offset) for r in appended}) == len(appended) == 500
    for partition in range(4):
        stored = await read_all(event_log, topic, partition)
        assert [r.offset for r in stored] == list(range(len(stored)))
    assert sum((await event_log.end_offsets(topic)).values()) == 500


async def test_one_keys_records_stay_in_order(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 5)

    async def writer(key: str) -> None:
        for i in range(30):
            await event_log.append([Append(topic, key, str(i).encode())])

    keys = [f"run-{n}" for n in range(8)]
    await asyncio.gather(*(writer(key) for key in keys))
    for key in keys:
        stored = await read_all(event_log, topic, partition_for(key, 5))
        values = [int(r.value) for r in stored if r.key == key]
        assert values == list(range(30))


async def test_values_and_keys_round_trip(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 1)
    values = [bytes(range(256)), b"", b"\x00" * 3, "\u00e9\U0001f642".encode()]
    keys = ["plain", "", "with space", "\u65e5\u672c\u8a9e"]
    appended = await event_log.append(
        [Append(topic, k, v) for k, v in zip(keys, values, strict=True)]
    )
    stored = await event_log.read(topic, 0, 0)
    assert stored == appended
    assert [(r.key, r.value) for r in stored] == list(zip(keys, values, strict=True))


async def test_a_batch_with_an_unknown_topic_appends_nothing(
    event_log: EventLog, unique: Unique
) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 2)
    with pytest.raises(UnknownTopic):
        await event_log.append([Append(topic, "a", b"1"), Append(unique("nope"), "b", b"2")])
    assert await event_log.end_offsets(topic) == {0: 0, 1: 0}


# --- reads -------------------------------------------------------------------------------


async def test_read_from_an_offset_with_max_records(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 1)
    appended = await event_log.append([Append(topic, "k", str(i).encode()) for i in range(10)])

    assert await event_log.read(topic, 0, 0, max_records=3) == appended[:3]
    assert await event_log.read(topic, 0, 4, max_records=3) == appended[4:7]
    assert await event_log.read(topic, 0, 8) == appended[8:]
    assert await event_log.read(topic, 0, 10) == []
    assert await event_log.read(topic, 0, 99) == []


async def test_reading_from_a_negative_offset_fails(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 1)
    with pytest.raises(LogError):
        await event_log.read(topic, 0, -1)


async def test_an_empty_partition_reads_empty(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 2)
    assert await event_log.read(topic, 1, 0) == []


# --- consumer groups -----------------------------------------------------------------------


async def test_committed_defaults_to_zero(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 3)
    assert await event_log.committed(unique("g"), topic) == {0: 0, 1: 0, 2: 0}


async def test_commit_round_trips_and_groups_are_independent(
    event_log: EventLog, unique: Unique
) -> None:
    topic, other = unique("t"), unique("other")
    await event_log.create_topic(topic, 3)
    await event_log.create_topic(other, 1)
    g1, g2 = unique("g1"), unique("g2")

    await event_log.commit(g1, {TopicPartition(topic, 0): 5, TopicPartition(topic, 2): 7})
    await event_log.commit(g2, {TopicPartition(topic, 1): 1})
    await event_log.commit(g1, {TopicPartition(other, 0): 9})
    assert await event_log.committed(g1, topic) == {0: 5, 1: 0, 2: 7}
    assert await event_log.committed(g2, topic) == {0: 0, 1: 1, 2: 0}
    assert await event_log.committed(g1, other) == {0: 9}
    assert await event_log.committed(g2, other) == {0: 0}

    await event_log.commit(g1, {TopicPartition(topic, 0): 6})  # the last commit wins
    assert await event_log.committed(g1, topic) == {0: 6, 1: 0, 2: 7}


async def test_append_and_commit_does_both(event_log: EventLog, unique: Unique) -> None:
    source, sink, group = unique("source"), unique("sink"), unique("g")
    await event_log.create_topic(source, 2)
    await event_log.create_topic(sink, 2)
    records = await event_log.append_and_commit(
        [Append(sink, "k", b"out")], group, {TopicPartition(source, 1): 3}
    )
    assert [(r.topic, r.key, r.value) for r in records] == [(sink, "k", b"out")]
    assert await event_log.read(sink, records[0].partition, 0) == records
    assert await event_log.committed(group, source) == {0: 0, 1: 3}


async def test_append_and_commit_is_all_or_nothing(event_log: EventLog, unique: Unique) -> None:
    source, sink, group = unique("source"), unique("sink"), unique("g")
    await event_log.create_topic(source, 2)
    await event_log.create_topic(sink, 2)

    # A commit the log cannot take: nothing is appended.
    with pytest.raises(UnknownTopic):
        await event_log.append_and_commit(
            [Append(sink, "k", b"out")],
            group,
            {TopicPartition(source, 0): 1, TopicPartition(unique("nope"), 0): 1},
        )
    with pytest.raises(LogError):
        await event_log.append_and_commit(
            [Append(sink, "k", b"out")], group, {TopicPartition(source, 5): 1}
        )
    # A record the log cannot take: nothing is committed.
    with pytest.raises(UnknownTopic):
        await event_log.append_and_commit(
            [Append(unique("nope"), "k", b"out")], group, {TopicPartition(source, 0): 1}
        )
    assert await event_log.end_offsets(sink) == {0: 0, 1: 0}
    assert await event_log.committed(group, source) == {0: 0, 1: 0}


# --- notification --------------------------------------------------------------------------


async def _woken_at_once(event_log: EventLog, topic: str, topics: list[str] | None) -> None:
    """A wait for appends (to `topics`) is ended at once by an append to `topic`."""
    waiter = asyncio.create_task(event_log.wait_for_append(timeout=30, topics=topics))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    started = time.monotonic()
    await event_log.append([Append(topic, "k", b"v")])
    await asyncio.wait_for(waiter, timeout=10)
    assert time.monotonic() - started < 5


async def test_wait_for_append_wakes_on_append(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 1)
    await _woken_at_once(event_log, topic, None)


async def test_a_wait_for_some_topics_wakes_on_their_appends_not_on_others(
    event_log: EventLog, unique: Unique
) -> None:
    mine, other = unique("mine"), unique("other")
    await event_log.create_topic(mine, 2)
    await event_log.create_topic(other, 1)
    # An append to another topic does not end the wait: it runs to its timeout.
    started = time.monotonic()
    waiter = asyncio.create_task(event_log.wait_for_append(timeout=0.5, topics=[mine]))
    await event_log.append([Append(other, "k", b"v")])
    await asyncio.wait_for(waiter, timeout=10)
    assert time.monotonic() - started >= 0.45
    # One to the topic waited for does, at once.
    await _woken_at_once(event_log, mine, [other, mine])


async def test_wait_for_append_times_out(event_log: EventLog) -> None:
    started = time.monotonic()
    await event_log.wait_for_append(timeout=0.2)
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 5
