"""The read models' positions reach the log's end offsets even where no record is
there to apply: past Kafka's transaction markers (every fenced commit leaves one, and
it takes an offset) and past poison the projector set aside. A reader waiting for
"everything appended so far" would otherwise wait for records that never come."""

from __future__ import annotations

import uuid
from pathlib import Path

from aob.events.log.consumer import Consumer
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append, TopicPartition
from aob.events.log.prefixed import PrefixedEventLog
from aob.events.log.sqlite import SqliteEventLog
from aob.events.types import DEADLETTER_TOPIC, RUNS_TOPIC, WORKFLOWS_TOPIC
from aob.projections.readmodels.port import ThreadedReadModels
from aob.projections.readmodels.postgres import PostgresReadModels
from aob.projections.runtime.projector import ProjectorHost, ReadYourWrites
from tests.cluster_services.test_read_your_writes import submitted

INPUT = "positions.input"


async def test_positions_pass_the_transaction_markers_of_fenced_commits(
    kafka_bootstrap: str, postgres_schema: str
) -> None:
    kafka = await KafkaEventLog.open(kafka_bootstrap)
    log = PrefixedEventLog(kafka, f"t{uuid.uuid4().hex[:8]}.")
    projecting = await PostgresReadModels.open(postgres_schema, max_size=2)
    reading = await PostgresReadModels.open(postgres_schema, max_size=2)
    for topic, partitions in ((RUNS_TOPIC, 2), (WORKFLOWS_TOPIC, 1), (INPUT, 1)):
        await log.create_topic(topic, partitions)
    await log.create_topic(DEADLETTER_TOPIC, 1)
    writer = Consumer(log, "positions-writer", [INPUT], session_timeout=6)
    projector = ProjectorHost(log, projecting)
    waiter = ReadYourWrites(log, reading, interval=0.01)
    try:
        await writer.start()
        await projector.start()
        for index in range(3):  # three transactions: records, then a marker each time
            await log.append([Append(INPUT, "k", b"x")])
            while not await writer.poll(timeout=1.0):
                pass
            await writer.commit([submitted(f"run_{index}")])
        for _ in range(50):  # the projector reads the runs, then steps over the markers
            await projector.step(timeout=0.2)
            if await waiter.wait_caught_up(timeout=0.1):
                break
        assert await waiter.wait_caught_up(timeout=5.0)
        ends = await log.end_offsets(RUNS_TOPIC)
        stored = await reading.offsets()
        assert all(stored.get(TopicPartition(RUNS_TOPIC, p), 0) == end for p, end in ends.items())
        assert sum(ends.values()) > 3  # markers took offsets: the case this is about
    finally:
        await writer.close()
        await projector.close()
        await waiter.close()
        for store in (projecting, reading):
            await store.close()
        await kafka.close()


async def test_positions_pass_poison_at_once_and_a_restart_sets_it_aside_no_more(
    tmp_path: Path,
) -> None:
    log = await SqliteEventLog.open(tmp_path / "log.db")
    for topic in (RUNS_TOPIC, WORKFLOWS_TOPIC, DEADLETTER_TOPIC):
        await log.create_topic(topic, 1)
    store = await ThreadedReadModels.open(tmp_path / "rm.db")
    try:
        await log.append([submitted("run_ok"), Append(RUNS_TOPIC, "run_bad", b"\x00garbage")])
        projector = ProjectorHost(log, store)
        await projector.start()
        assert await projector.step() == 2
        await projector.close()
        # The poison was the batch's last record: the store is past it already.
        assert (await store.offsets())[TopicPartition(RUNS_TOPIC, 0)] == 2
        again = ProjectorHost(log, store)
        await again.start()
        read = await again.consumer.poll(timeout=0)
        await again.close()
        # Only what setting it aside appended (the run's failure) is new to read.
        assert [(r.offset, r.key) for r in read] == [(2, "run_bad")]
        assert len(await log.read(DEADLETTER_TOPIC, 0, 0)) == 1
    finally:
        await store.close()
        await log.close()
