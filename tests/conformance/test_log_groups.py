"""Consumer groups: every adapter shares partitions among members and fences the ones
that lost them (see conftest.ADAPTERS). Rebalances happen in the background: tests
wait on conditions (polling every member meanwhile, as a host would), never sleep."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable

import pytest

from aob.events.log.consumer import Consumer
from aob.events.log.port import Append, EventLog, Fenced, Record, TopicPartition
from aob.events.partitioner import partition_for

Unique = Callable[[str], str]

# Small enough for quick tests; the Kafka broker of the tests accepts sessions this short.
SESSION = 3.0
SETTLE = 60.0  # seconds a rebalance may take, at most, on a busy shared machine


class Recorder:
    """A listener that notes what it is told; `on_revoke` runs inside on_revoked."""

    def __init__(self) -> None:
        self.assigned: list[frozenset[TopicPartition]] = []
        self.revoked: list[frozenset[TopicPartition]] = []
        self.on_revoke: Callable[[frozenset[TopicPartition]], Awaitable[None]] | None = None

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        self.assigned.append(partitions)

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        self.revoked.append(partitions)
        if self.on_revoke is not None:
            await self.on_revoke(partitions)


def member(
    log: EventLog,
    group: str,
    topics: Iterable[str],
    listener: Recorder | None = None,
    *,
    poll_timeout: float = 30.0,
) -> Consumer:
    return Consumer(
        log, group, topics, listener=listener, session_timeout=SESSION, poll_timeout=poll_timeout
    )


async def polling(
    consumers: Iterable[Consumer],
    condition: Callable[[], bool],
    seen: dict[int, list[Record]] | None = None,
) -> None:
    """Poll every consumer (keeping what each reads in `seen`) until `condition`."""
    consumers = list(consumers)
    async with asyncio.timeout(SETTLE):
        while not condition():
            batches = await asyncio.gather(*(c.poll(timeout=0.05) for c in consumers))
            if seen is not None:
                for consumer, batch in zip(consumers, batches, strict=True):
                    seen.setdefault(id(consumer), []).extend(batch)


def partitions(topic: str, count: int) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(topic, p) for p in range(count))


def shared(consumers: list[Consumer], every: frozenset[TopicPartition]) -> bool:
    """Disjoint, covering, and nobody left without a share."""
    shares = [c.assignment for c in consumers]
    disjoint = all(not (a & b) for a, b in itertools.combinations(shares, 2))
    return disjoint and frozenset().union(*shares) == every and all(shares)


async def test_members_share_the_partitions(event_log: EventLog, unique: Unique) -> None:
    topic, group = unique("t"), unique("g")
    await event_log.create_topic(topic, 6)
    every = partitions(topic, 6)
    consumers = [member(event_log, group, [topic]) for _ in range(3)]
    try:
        for consumer in consumers:
            await consumer.start()
        await polling(consumers, lambda: shared(consumers, every))
        # Each record is read by exactly one member.
        appended = await event_log.append([Append(topic, f"k{i}", b"v") for i in range(30)])
        seen: dict[int, list[Record]] = {}
        await polling(consumers, lambda: sum(map(len, seen.values())) >= 30, seen)
        read = [r for records in seen.values() for r in records]
        assert sorted(read, key=_place) == sorted(appended, key=_place)
        for consumer in consumers:
            assert {r.position for r in seen[id(consumer)]} <= consumer.assignment
    finally:
        for consumer in consumers:
            await consumer.close()


async def test_a_member_joining_and_leaving_rebalances(event_log: EventLog, unique: Unique) -> None:
    topic, group = unique("t"), unique("g")
    await event_log.create_topic(topic, 4)
    every = partitions(topic, 4)
    first_listener, second_listener = Recorder(), Recorder()
    first = member(event_log, group, [topic], first_listener)
    second = member(event_log, group, [topic], second_listener)
    await first.start()
    try:
        assert first.assignment == every  # on_assigned has run when start returns
        assert first_listener.assigned == [every]

        await second.start()
        await polling([first, second], lambda: shared([first, second], every))
        assert first_listener.revoked
        assert first_listener.revoked[0] == every
        assert second_listener.assigned[-1] == second.assignment

        await second.close()
        assert second_listener.revoked[-1] == second_listener.assigned[-1]
        await polling([first], lambda: first.assignment == every)
        assert first_listener.assigned[-1] == every
    finally:
        await first.close()
        await second.close()


async def test_a_silent_member_loses_its_partitions_and_is_fenced(
    event_log: EventLog, unique: Unique
) -> None:
    topic, sink, group = unique("t"), unique("sink"), unique("g")
    await event_log.create_topic(topic, 2)
    await event_log.create_topic(sink, 1)
    every = partitions(topic, 2)
    await event_log.append([Append(topic, f"k{i}", b"v") for i in range(6)])
    silent_listener = Recorder()
    silent = member(event_log, group, [topic], silent_listener, poll_timeout=SESSION)
    alive = member(event_log, group, [topic], poll_timeout=30.0)
    await silent.start()
    try:
        read = await _drain(silent, 6)
        await alive.start()
        # The silent member polls no more: past its timeout, the other takes everything.
        await polling([alive], lambda: alive.assignment == every)
        with pytest.raises(Fenced):
            await silent.commit({read[0].position: [Append(sink, "late", b"stale")]})
        # A host with nothing to undo drops its batch instead, and lives on.
        late = {read[0].position: [Append(sink, "late", b"stale")]}
        assert await silent.commit_unless_fenced(late) == []
        assert await _stored(event_log, sink) == []
        assert await event_log.committed(group, topic) == {0: 0, 1: 0}
        assert silent_listener.revoked  # told late, when it found out
    finally:
        await alive.close()
        await silent.close()


async def test_a_revoked_member_commits_before_the_new_owner_reads(
    event_log: EventLog, unique: Unique
) -> None:
    topic, sink, group = unique("t"), unique("sink"), unique("g")
    await event_log.create_topic(topic, 4)
    await event_log.create_topic(sink, 1)
    every = partitions(topic, 4)
    old = await event_log.append([Append(topic, f"k{i}", b"old") for i in range(12)])
    listener = Recorder()
    first = member(event_log, group, [topic], listener)
    second = member(event_log, group, [topic])
    committed_in_revoke: list[Record] = []

    async def settle(lost: frozenset[TopicPartition]) -> None:
        # What a host does: settle in-flight work, commit it with its outputs.
        outputs = {tp: [Append(sink, f"out-{tp.partition}", b"done")] for tp in lost}
        committed_in_revoke.extend(await first.commit(outputs, partitions=lost))

    await first.start()
    try:
        assert len(await _drain(first, 12)) == 12
        listener.on_revoke = settle
        await second.start()
        await polling([first, second], lambda: shared([first, second], every))
        assert len(committed_in_revoke) == 4
        assert await _stored(event_log, sink) == sorted(committed_in_revoke, key=_place)
        # Neither member reads the old records again; new ones are read once.
        new = await event_log.append([Append(topic, f"k{i}", b"new") for i in range(12)])
        seen: dict[int, list[Record]] = {}
        await polling([first, second], lambda: sum(map(len, seen.values())) >= 12, seen)
        read = [r for records in seen.values() for r in records]
        assert sorted(read, key=_place) == sorted(new, key=_place)
        assert not set(read) & set(old)
        # The old owner cannot commit for a partition it gave up.
        lost = next(iter(second.assignment))
        with pytest.raises(Fenced):
            await first.commit({lost: [Append(sink, "zombie", b"stale")]}, partitions=[lost])
        assert len(await _stored(event_log, sink)) == 4
    finally:
        await first.close()
        await second.close()


async def test_work_on_a_batch_whose_partition_was_lost_and_regained_is_not_committed(
    event_log: EventLog, unique: Unique
) -> None:
    """A host works on its last poll's records (no listener) while its partition is
    revoked and dealt back to it (a member joins, then leaves). What it made of them is
    dropped: its position went back to the committed offset, so the records come again
    (and another member may have worked on them meanwhile), and committing the first
    batch's work would do it twice."""
    topic, sink, group = unique("t"), unique("sink"), unique("g")
    await event_log.create_topic(topic, 1)
    await event_log.create_topic(sink, 1)
    every = partitions(topic, 1)
    [task] = await event_log.append([Append(topic, "k", b"task")])
    listener = Recorder()
    busy = member(event_log, group, [topic], listener)
    other = member(event_log, group, [topic])
    await busy.start()
    try:
        assert await _drain(busy, 1) == [task]
        # The busy member polls no more until it commits; the group moves on without it.
        await other.start()
        await polling([other], lambda: bool(listener.revoked) and _dealt([busy, other], every))
        await other.close()
        # Dealt again (on_assigned runs in every rebalance, with nothing or with all).
        await _until(lambda: len(listener.assigned) >= 3 and busy.assignment == every)

        assert await busy.commit_unless_fenced([Append(sink, "k", b"work")]) == []
        assert await _stored(event_log, sink) == []
        assert await event_log.committed(group, topic) == {0: 0}
        # Read again from the committed offset; this time the work is committed.
        assert await _drain(busy, 1) == [task]
        assert len(await busy.commit_unless_fenced([Append(sink, "k", b"work")])) == 1
        assert await event_log.committed(group, topic) == {0: 1}
    finally:
        await busy.close()
        await other.close()


async def test_a_poll_that_spans_a_rebalance_is_read_again_when_its_work_is_dropped(
    event_log: EventLog, unique: Unique
) -> None:
    """A poll waiting while a member joins returns the records of the partition the
    busy member got back, read again from its committed offset. The partition was
    revoked since that poll began, so the work made of them is dropped; they must then
    come again, or nobody would ever do it."""
    topic, sink, group = unique("t"), unique("sink"), unique("g")
    await event_log.create_topic(topic, 2)
    await event_log.create_topic(sink, 1)
    keys = [
        next(k for k in (f"k{i}" for i in itertools.count()) if partition_for(k, 2) == p)
        for p in (0, 1)
    ]
    tasks = await event_log.append([Append(topic, key, b"task") for key in keys])
    listener = Recorder()
    busy = member(event_log, group, [topic], listener)
    other = member(event_log, group, [topic])
    await busy.start()
    try:
        assert sorted(await _drain(busy, 2), key=_place) == sorted(tasks, key=_place)
        during = asyncio.create_task(busy.poll(timeout=SETTLE))
        await other.start()  # each member gets one partition, with one task in it
        await polling(
            [other], lambda: bool(listener.revoked) and shared([busy, other], partitions(topic, 2))
        )
        [again] = await during
        assert again.position in busy.assignment

        assert await busy.commit_unless_fenced([Append(sink, again.key, b"work")]) == []
        assert await _drain(busy, 1) == [again]
        assert len(await busy.commit_unless_fenced([Append(sink, again.key, b"work")])) == 1
        assert [r.key for r in await _stored(event_log, sink)] == [again.key]
    finally:
        await busy.close()
        await other.close()


async def test_appends_go_with_their_keys_partition_in_order_or_are_dropped_when_lost(
    event_log: EventLog, unique: Unique
) -> None:
    """A plain sequence of appends is split by key: each goes in the transaction of the
    partition its key has among the topics read, in the order given; an append whose
    partition another member owns is dropped (that member does its input's work)."""
    topic, sink, group = unique("t"), unique("sink"), unique("g")
    await event_log.create_topic(topic, 4)
    await event_log.create_topic(sink, 1)
    first, second = member(event_log, group, [topic]), member(event_log, group, [topic])
    await first.start()
    await second.start()
    try:
        await polling([first, second], lambda: shared([first, second], partitions(topic, 4)))
        home = min(first.assignment, key=lambda tp: tp.partition).partition
        homed = (k for k in (f"k{i}" for i in itertools.count()) if partition_for(k, 4) == home)
        x, y = next(homed), next(homed)  # two keys of one partition the first member owns
        foreign = next(
            k
            for k in (f"f{i}" for i in itertools.count())
            if TopicPartition(topic, partition_for(k, 4)) in second.assignment
        )
        order = [(x, b"1"), (foreign, b"2"), (y, b"3"), (x, b"4"), (foreign, b"5")]
        await first.commit([Append(sink, key, value) for key, value in order])

        written = await event_log.read(sink, 0, 0)
        assert [(r.key, r.value) for r in written] == [(x, b"1"), (y, b"3"), (x, b"4")]
    finally:
        await first.close()
        await second.close()


async def test_groups_are_independent(event_log: EventLog, unique: Unique) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 3)
    every = partitions(topic, 3)
    appended = await event_log.append([Append(topic, f"k{i}", b"v") for i in range(9)])
    one = member(event_log, unique("g1"), [topic])
    other = member(event_log, unique("g2"), [topic])
    await one.start()
    await other.start()
    try:
        assert one.assignment == other.assignment == every
        for consumer in (one, other):
            assert sorted(await _drain(consumer, 9), key=_place) == sorted(appended, key=_place)
    finally:
        await one.close()
        await other.close()


async def test_a_consumer_without_a_group_follows_everything(
    event_log: EventLog, unique: Unique
) -> None:
    topic = unique("t")
    await event_log.create_topic(topic, 3)
    appended = await event_log.append([Append(topic, f"k{i}", b"v") for i in range(9)])
    readers = [Consumer(event_log, None, [topic]) for _ in range(2)]
    for reader in readers:
        await reader.start()
        assert reader.assignment == partitions(topic, 3)
        assert sorted(await _drain(reader, 9), key=_place) == sorted(appended, key=_place)


async def test_the_next_owner_skips_what_a_member_finished_past_its_offset(
    event_log: EventLog, unique: Unique
) -> None:
    """A host finishing records out of order commits up to its first unfinished one and
    names those finished past it: no later owner of the partition gets those again,
    also after an owner that committed without reading them."""
    topic, group = unique("t"), unique("g")
    await event_log.create_topic(topic, 1)
    tp = TopicPartition(topic, 0)
    records = await event_log.append([Append(topic, "k", b"%d" % i) for i in range(10)])
    at = [r.offset for r in records]
    first = member(event_log, group, [topic])
    await first.start()
    try:
        assert await _drain(first, 10) == records
        # 2, 5 and 6 still running; 3, 4 and 7 to 9 finished.
        done = [range(at[3], at[4] + 1), range(at[7], at[9] + 1)]
        await first.commit(offsets={tp: at[2]}, done={tp: done})
    finally:
        await first.close()

    unfinished = [records[2], records[5], records[6]]
    second = member(event_log, group, [topic])
    await second.start()
    try:
        await second.commit(offsets={tp: at[2]})  # before reading anything
    finally:
        await second.close()

    third = member(event_log, group, [topic])
    await third.start()
    try:
        later = await event_log.append([Append(topic, "k", b"later")])
        assert await _drain(third, 4) == unfinished + later
    finally:
        await third.close()


def _dealt(consumers: list[Consumer], every: frozenset[TopicPartition]) -> bool:
    return frozenset().union(*(c.assignment for c in consumers)) == every


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for what members do in the background (their rebalances), polling none."""
    async with asyncio.timeout(SETTLE):
        while not condition():  # noqa: ASYNC110 - an adapter's background task, no event
            await asyncio.sleep(0.01)


async def _drain(consumer: Consumer, count: int) -> list[Record]:
    records: list[Record] = []
    async with asyncio.timeout(SETTLE):
        while len(records) < count:
            records += await consumer.poll(timeout=0.5)
    return records


async def _stored(log: EventLog, topic: str) -> list[Record]:
    """Every record of `topic` a reader sees (fenced appends leave offset gaps on Kafka)."""
    records: list[Record] = []
    for partition in range(await log.partitions(topic)):
        offset = 0
        while batch := await log.read(topic, partition, offset):
            records += batch
            offset = batch[-1].offset + 1
    return records


def _place(record: Record) -> tuple[int, int]:
    return (record.partition, record.offset)
