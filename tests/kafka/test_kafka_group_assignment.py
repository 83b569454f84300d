"""How a Kafka group member keeps hold of its partitions.

A member gains partitions while it is busy polling (a host's loop runs
on while aiokafka runs the rebalance callbacks in its background): nothing of those
partitions may be read before their `on_assigned` has returned.

The coordinator restores a gained partition in `on_assigned` and folds again, without
appending, what lies between its changelog marker and the member's position: a poll
that read ahead during the restore moved that position past records nobody had folded,
whose NodeScheduled were then never appended (runs `running` forever after a kill -9
in tests/cluster_scaled/test_chaos.py).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from aob.events.log.consumer import Consumer
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append, Fenced, Record, TopicPartition
from aob.events.partitioner import partition_for

SESSION = 3.0
SETTLE = 60.0  # seconds a rebalance may take, at most, on a busy shared machine
READ_AHEAD_POLLS = 15  # polls (0.2 s each) a busy on_assigned lets through meanwhile


def unique(name: str) -> str:
    return f"test.kafka.{name}.{uuid.uuid4().hex[:12]}"


class SlowRestore:
    """Takes its time in `on_assigned` once it is `armed`, as a restore does; notes
    the member's positions of the gained partitions when it is done."""

    def __init__(self) -> None:
        self.consumer: Consumer | None = None
        self.armed = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.positions_at_end: dict[TopicPartition, int] = {}

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        if not self.armed:
            return
        self.entered.set()
        await self.release.wait()
        assert self.consumer is not None
        self.positions_at_end = {tp: self.consumer.positions[tp] for tp in partitions}

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        pass


async def test_a_busy_member_reads_nothing_of_a_gained_partition_before_on_assigned_returns(
    kafka_bootstrap: str,
) -> None:
    topic, group = unique("t"), unique("g")
    log = await KafkaEventLog.open(kafka_bootstrap)
    try:
        await log.create_topic(topic, 2)
        listener = SlowRestore()
        busy = Consumer(log, group, [topic], listener=listener, session_timeout=SESSION)
        listener.consumer = busy
        other = Consumer(log, group, [topic], session_timeout=SESSION)
        await busy.start()
        await other.start()
        async with asyncio.timeout(SETTLE):
            while len(busy.assignment) != 1 or len(other.assignment) != 1:
                await asyncio.gather(busy.poll(0.05), other.poll(0.05))
        gained = next(iter(other.assignment))
        # Records wait in the partition `busy` is about to gain; nothing is committed.
        appended = await log.append([Append(topic, f"k{i}", b"x") for i in range(40)])
        expected = [r.offset for r in appended if r.position == gained]
        listener.armed = True
        await other.close()  # leaves: `busy` gains its partition in the rebalance

        read: list[Record] = []
        async with asyncio.timeout(SETTLE):
            while not listener.entered.is_set():
                read += await busy.poll(0.05)
        # The host's loop polls on while on_assigned restores.
        read_meanwhile: list[Record] = []
        for _ in range(READ_AHEAD_POLLS):
            read_meanwhile += await busy.poll(0.2)
        listener.release.set()
        async with asyncio.timeout(SETTLE):
            while not listener.positions_at_end:
                read += await busy.poll(0.05)

        assert [r for r in read_meanwhile if r.position == gained] == []
        # Its position is where the group committed (nothing): 0, not past unread records.
        assert listener.positions_at_end[gained] == 0
        # Then every record of it is read, from the first, once.
        async with asyncio.timeout(SETTLE):
            while len([r for r in read if r.position == gained]) < len(expected):
                read += await busy.poll(0.1)
        assert [r.offset for r in read if r.position == gained] == expected
        await busy.close()
    finally:
        await log.close()


class Told:
    """Counts the callbacks."""

    def __init__(self) -> None:
        self.assigned = 0
        self.revoked = 0

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        self.assigned += 1

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        self.revoked += 1


async def test_a_member_fenced_while_it_still_owns_its_partition_gets_it_back(
    kafka_bootstrap: str,
) -> None:
    """The broker aborts a transaction that outlives `transaction.timeout.ms` (around a
    broker restart) by bumping the producer's epoch, as a new owner's producer would:
    the member's commit is fenced although no rebalance is under way. It must not be
    left owning a partition it can never commit for: it rejoins, and the rebalance
    gives it the partition back with a new producer."""
    topic, sink, group = unique("t"), unique("sink"), unique("g")
    log = await KafkaEventLog.open(kafka_bootstrap)
    told = Told()
    member = Consumer(log, group, [topic], listener=told, session_timeout=SESSION)
    tp = TopicPartition(topic, 0)
    try:
        await log.create_topic(topic, 1)
        await log.create_topic(sink, 1)
        await member.start()
        assert member.assignment == {tp}
        # What the broker does to a timed-out transaction: a higher epoch for the id.
        usurper = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=f"{group}.{topic}.0"
        )
        await usurper.start()
        await usurper.stop()
        with pytest.raises(Fenced):
            await member.commit({tp: [Append(sink, "k", b"fenced")]}, offsets={tp: 0})

        async with asyncio.timeout(SETTLE):
            while told.assigned < 2:
                await member.poll(0.05)
        assert told.revoked >= 1
        written = await member.commit({tp: [Append(sink, "k", b"again")]}, offsets={tp: 0})
        assert [r.value for r in written] == [b"again"]
        assert [r.value for r in await log.read(sink, 0, 0)] == [b"again"]
        await member.close()
    finally:
        await log.close()


async def test_appends_keyed_to_a_lost_partition_are_dropped_not_moved(
    kafka_bootstrap: str,
) -> None:
    """A host that read a record, lost its partition in a rebalance meanwhile, and
    commits what it made of it as a plain sequence: the append must not be written
    under a partition it still owns (the hitl service wrote a decision's outcome
    twice so in the chaos test); the new owner makes it again."""
    topic, group = unique("t"), unique("g")
    log = await KafkaEventLog.open(kafka_bootstrap)
    first = Consumer(log, group, [topic], session_timeout=SESSION)
    second = Consumer(log, group, [topic], session_timeout=SESSION)
    try:
        await log.create_topic(topic, 2)
        keys = {partition_for(f"k{i}", 2): f"k{i}" for i in range(20)}
        await first.start()
        await second.start()
        async with asyncio.timeout(SETTLE):
            while len(first.assignment) != 1 or len(second.assignment) != 1:
                await asyncio.gather(first.poll(0.05), second.poll(0.05))
        lost = next(iter(second.assignment))
        kept = next(iter(first.assignment))
        made = [
            Append(topic, keys[lost.partition], b"stale"),
            Append(topic, keys[kept.partition], b"mine"),
        ]
        written = await first.commit(made)
        assert [r.value for r in written] == [b"mine"]
        assert [r.value for r in await log.read(topic, kept.partition, 0)] == [b"mine"]
        assert await log.read(topic, lost.partition, 0) == []
        await first.close()
        await second.close()
    finally:
        await log.close()
