"""What the Kafka adapter promises beyond the port's conformance suite.

Plain aiokafka clients appear here on purpose: they play the other programs that
share the cluster (faust, a worker in another language) and check what the adapter
left in Kafka itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from aob.events.log.consumer import Consumer
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append, LogError, TopicPartition
from aob.events.partitioner import partition_for
from aob.infra.kafka import free_port


def unique(name: str) -> str:
    return f"test.kafka.{name}.{uuid.uuid4().hex[:12]}"


@given(key=st.text(max_size=40), partitions=st.integers(min_value=1, max_value=500))
@settings(max_examples=500)
def test_our_partitioner_is_the_kafka_producers(key: str, partitions: int) -> None:
    """The adapter leaves partitioning to aiokafka's producer; everything else in aob
    (the embedded log, tests) uses ours: they must never disagree."""
    all_partitions = list(range(partitions))
    theirs = DefaultPartitioner()(key.encode("utf-8"), all_partitions, all_partitions)
    assert theirs == partition_for(key, partitions)


async def test_records_and_offsets_survive_the_adapter_restarting(kafka_bootstrap: str) -> None:
    topic, group = unique("restart"), unique("group")
    first = await KafkaEventLog.open(kafka_bootstrap)
    try:
        await first.create_topic(topic, 3)
        appended = await first.append([Append(topic, f"run-{i}", b"%d" % i) for i in range(9)])
        ends = await first.end_offsets(topic)
        positions = {TopicPartition(topic, p): end for p, end in ends.items()}
        await first.commit(group, positions)
    finally:
        await first.close()

    second = await KafkaEventLog.open(kafka_bootstrap)
    try:
        assert await second.partitions(topic) == 3
        assert await second.end_offsets(topic) == ends
        assert await second.committed(group, topic) == ends
        stored = [r for p in range(3) for r in await second.read(topic, p, 0)]
        assert sorted(stored, key=lambda r: (r.partition, r.offset)) == sorted(
            appended, key=lambda r: (r.partition, r.offset)
        )
    finally:
        await second.close()


async def test_wait_for_append_sees_another_clients_append(kafka_bootstrap: str) -> None:
    topic = unique("wake")
    async with (
        await KafkaEventLog.open(kafka_bootstrap) as writer,
        await KafkaEventLog.open(kafka_bootstrap, poll_interval=0.05) as reader,
    ):
        await writer.create_topic(topic, 1)
        assert await reader.read(topic, 0, 0) == []  # the reader is at the end
        waiter = asyncio.create_task(reader.wait_for_append(timeout=30))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        started = time.monotonic()
        [record] = await writer.append([Append(topic, "k", b"v")])
        await asyncio.wait_for(waiter, timeout=10)
        assert time.monotonic() - started < 5
        assert await reader.read(topic, 0, 0) == [record]


async def test_a_consumer_wakes_on_another_clients_append(kafka_bootstrap: str) -> None:
    """A consumer asks each topic's end offsets rather than reading every partition at
    its end: those partitions must be watched too."""
    topic = unique("consumer-wake")
    async with (
        await KafkaEventLog.open(kafka_bootstrap) as writer,
        await KafkaEventLog.open(kafka_bootstrap) as reader,
    ):
        await writer.create_topic(topic, 4)
        consumer = Consumer(reader, unique("group"), [topic])
        await consumer.start()
        assert await consumer.poll(timeout=0) == []
        polling = asyncio.create_task(consumer.poll(timeout=60))
        await asyncio.sleep(0.3)
        appended = await writer.append([Append(topic, f"k{i}", b"v") for i in range(8)])
        first = await asyncio.wait_for(polling, timeout=10)  # woken, not timed out
        assert first
        assert set(first) <= set(appended)


async def test_an_append_seen_while_the_caller_was_reading_is_not_lost(
    kafka_bootstrap: str,
) -> None:
    """The watcher's wake-up can come between a caller's read and its wait: that wait
    must return at once instead of sleeping until its timeout."""
    topic = unique("between")
    async with (
        await KafkaEventLog.open(kafka_bootstrap) as writer,
        await KafkaEventLog.open(kafka_bootstrap) as reader,
    ):
        await writer.create_topic(topic, 1)
        assert await reader.end_offsets(topic) == {0: 0}
        await writer.append([Append(topic, "k", b"v")])
        await asyncio.sleep(1.0)  # the reader's watcher sees it, with nobody waiting
        async with asyncio.timeout(10):  # in this task: wait_for would make another
            await reader.wait_for_append(timeout=60)
        assert await reader.end_offsets(topic) == {0: 1}


async def test_records_of_other_producers_read_as_records(kafka_bootstrap: str) -> None:
    topic = unique("foreign")
    async with await KafkaEventLog.open(kafka_bootstrap) as log:
        await log.create_topic(topic, 1)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"no key", key=None, partition=0)
            await producer.send_and_wait(topic, None, key=b"k", partition=0)  # a tombstone
            await producer.send_and_wait(topic, b"v", key=b"\xff\xfekey", partition=0)
        finally:
            await producer.stop()
        keyless, tombstone, binary_key = await log.read(topic, 0, 0)
        assert (keyless.key, keyless.value) == ("", b"no key")
        assert (tombstone.key, tombstone.value) == ("k", b"")
        assert (binary_key.key, binary_key.value) == ("\ufffd\ufffdkey", b"v")


async def test_commits_are_kafka_group_offsets(kafka_bootstrap: str) -> None:
    """A plain Kafka consumer of the group (faust's, another language's) starts where
    the adapter committed."""
    topic, group = unique("offsets"), unique("group")
    async with await KafkaEventLog.open(kafka_bootstrap) as log:
        await log.create_topic(topic, 2)
        await log.commit(group, {TopicPartition(topic, 1): 7})
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        assert await consumer.committed(KafkaPartition(topic, 1)) == 7
        assert await consumer.committed(KafkaPartition(topic, 0)) is None
    finally:
        await consumer.stop()


async def test_topics_keep_every_record(kafka_bootstrap: str) -> None:
    topic = unique("retention")
    async with await KafkaEventLog.open(kafka_bootstrap) as log:
        await log.create_topic(topic, 1)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": None})]
        )
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for entry in response.resources[0][4]}
    assert configs["retention.ms"] == "-1"


async def test_an_unreachable_cluster_is_a_log_error() -> None:
    started = time.monotonic()
    with pytest.raises(LogError, match="cannot connect to Kafka"):
        await KafkaEventLog.open(f"127.0.0.1:{free_port()}", request_timeout=5)
    assert time.monotonic() - started < 30


async def test_a_closed_log_refuses_work(kafka_bootstrap: str) -> None:
    topic = unique("closed")
    log = await KafkaEventLog.open(kafka_bootstrap)
    await log.create_topic(topic, 1)
    await log.close()
    await log.close()  # idempotent
    with pytest.raises(LogError, match="closed"):
        await log.append([Append(topic, "k", b"v")])
    with pytest.raises(LogError, match="closed"):
        await log.read(topic, 0, 0)


async def test_a_read_steps_over_an_aborted_transaction_to_the_records_after_it(
    kafka_bootstrap: str,
) -> None:
    """A stretch of aborted records and their marker is not the end: a read from its
    start returns what another client committed after it, also when this log last saw
    the partition end right after that stretch. (A failed commit is judged by reading on
    to its records: taking the stretch for the end would write the commit twice.)"""
    topic = unique("aborted")
    log = await KafkaEventLog.open(kafka_bootstrap)
    other = await KafkaEventLog.open(kafka_bootstrap)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=unique("txn"), enable_idempotence=True
    )
    try:
        await log.create_topic(topic, 1)
        [first] = await log.append([Append(topic, "k", b"first")])
        await producer.start()
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted", key=b"k", partition=0)
        await producer.abort_transaction()
        after = first.offset + 1
        assert await log.read(topic, 0, after) == []  # only the aborted stretch: the end
        [later] = await other.append([Append(topic, "k", b"later")])
        assert [r.value for r in await log.read(topic, 0, after)] == [b"later"]
        assert later.offset > after
    finally:
        await producer.stop()
        await other.close()
        await log.close()
