"""After a transaction failed with its outcome unknown (its producer broke mid-commit,
as in a broker restart), a group member asks whether it was committed before trying
it again. The log tells: whether its first record is there, read at read_committed.
Not the group's offset, which the broker applies a moment after the transaction ends
(a fetch right after it may show the offset before: the chaos test's hitl decision
was appended twice so). Offsets alone are committed again: that repeats nothing.

The restart itself is in test_kafka_member_broker_restart.py; it cannot choose which
transaction the restart breaks, so the decision is pinned here, against a real broker.
"""

from __future__ import annotations

import time
import uuid

import pytest

from aob.events.log.kafka import KafkaEventLog, KafkaMember
from aob.events.log.port import Append, LogError, TopicPartition

BROKEN = LogError("cannot commit: KafkaError: Unexpected error during batch delivery")


class Quiet:
    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        pass

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        pass


async def test_an_unsure_commit_that_held_its_offset_is_judged_by_the_log(
    kafka_bootstrap: str,
) -> None:
    log = await KafkaEventLog.open(kafka_bootstrap)
    topic, sink, group = (f"unsure.{n}.{uuid.uuid4().hex[:8]}" for n in ("t", "sink", "g"))
    try:
        await log.create_topic(topic, 1)
        await log.create_topic(sink, 3)
        member = await log.join(group, [topic], Quiet())
        assert isinstance(member, KafkaMember)
        tp = TopicPartition(topic, 0)
        since = time.time_ns() // 1_000_000
        committed = Append(sink, "run-1", b"outcome of task 7")
        await member.commit({tp: [committed]}, offsets={tp: 0})  # the offset stays at 0

        async def judged(append: Append, offset: int | None) -> bool:
            return await member._committed_after_failure(tp, [append], offset, BROKEN, since)

        assert await judged(committed, 0) is True
        assert await judged(committed, None) is True
        never_sent = Append(sink, "run-1", b"outcome of task 8")
        assert await judged(never_sent, 0) is False
        # Another key, so another partition of the sink: it is looked for where it goes.
        assert await judged(Append(sink, "run-2", b"outcome of task 7"), 0) is False

        # A transaction that was aborted (the new producer's init ends it so) left
        # records that read_committed never shows: not committed.
        aborted = Append(sink, "run-1", b"outcome of task 9")
        with pytest.raises(RuntimeError):
            await _abort_a_transaction_of(member, tp, aborted)
        assert await judged(aborted, 0) is False

        # Nothing appended and the offset unchanged: trying again repeats nothing.
        assert await member._committed_after_failure(tp, [], 0, BROKEN, since) is False
        await member.leave()
    finally:
        await log.close()


async def _abort_a_transaction_of(member: KafkaMember, tp: TopicPartition, append: Append) -> None:
    producer = member._producers[tp]
    async with producer.transaction():
        await (await producer.send(append.topic, append.value, key=append.key.encode()))
        raise RuntimeError("the commit broke")
