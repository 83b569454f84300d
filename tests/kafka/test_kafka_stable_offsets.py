"""Committed offsets are read stable (KIP-447's `require_stable`): while a transaction
that commits a group's offset is not applied yet, the log's reads wait for it instead
of answering with the offset from before it. Reading around it is how a member taking
over a partition right after its predecessor's last commit did that commit's work
again (the scaled chaos test saw a decision answered twice beside a CPU hog)."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka import TopicPartition as KafkaPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from aob.events.log.kafka import KafkaEventLog
from aob.events.log.kafka_offsets import fetch_stable_offsets
from aob.events.log.port import TopicPartition


def unique(name: str) -> str:
    return f"test.stable.{name}.{uuid.uuid4().hex[:12]}"


async def test_an_open_transactions_offset_is_waited_for_not_read_around(
    kafka_bootstrap: str,
) -> None:
    topic, group = unique("t"), unique("g")
    kafka_tp = KafkaPartition(topic, 0)
    log = await KafkaEventLog.open(kafka_bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=unique("txn"), acks="all"
    )
    try:
        await log.create_topic(topic, 1)
        await log.commit(group, {TopicPartition(topic, 0): 3})
        await admin.start()
        await producer.start()
        await producer.begin_transaction()
        await producer.send_offsets_to_transaction({kafka_tp: OffsetAndMetadata(7, "")}, group)

        # What aiokafka's own read (OffsetFetch v3) answers: the offset from before.
        plain = await admin.list_consumer_group_offsets(group, partitions=[kafka_tp])
        assert plain[kafka_tp].offset == 3
        assert await fetch_stable_offsets(admin, group, [kafka_tp]) == ({}, {kafka_tp})

        reading = asyncio.create_task(log.committed(group, topic))
        await producer.commit_transaction()
        async with asyncio.timeout(30):
            assert await reading == {0: 7}
        stable = await fetch_stable_offsets(admin, group, [kafka_tp])
        assert stable == ({kafka_tp: OffsetAndMetadata(7, "")}, set())
    finally:
        await producer.stop()
        await admin.close()
        await log.close()


async def test_stable_reads_answer_offsets_and_metadata_of_several_topics(
    kafka_bootstrap: str,
) -> None:
    first, second, group = unique("a"), unique("b"), unique("g")
    log = await KafkaEventLog.open(kafka_bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        await log.create_topic(first, 2)
        await log.create_topic(second, 1)
        await log.commit(group, {TopicPartition(first, 1): 5, TopicPartition(second, 0): 2})
        await admin.start()
        asked = [KafkaPartition(first, 0), KafkaPartition(first, 1), KafkaPartition(second, 0)]
        found, pending = await fetch_stable_offsets(admin, group, asked)
        assert not pending
        assert {tp: meta.offset for tp, meta in found.items()} == {
            KafkaPartition(first, 0): -1,  # nothing committed
            KafkaPartition(first, 1): 5,
            KafkaPartition(second, 0): 2,
        }
        assert await log.committed(group, first) == {0: 0, 1: 5}
    finally:
        await admin.close()
        await log.close()
