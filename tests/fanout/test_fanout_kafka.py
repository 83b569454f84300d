"""The fanout hub in cluster mode: one Kafka reader serves every local subscriber."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from aob.events.codec import encode
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append
from aob.events.types import (
    Event,
    NodeCompleted,
    NodeScheduled,
    Payload,
    RunCompleted,
    RunSubmitted,
)
from aob.platform.fanout import FanoutHub, RunEvent, StreamEnd, StreamItem
from aob.projections.readmodels.sqlite import SqliteReadModels

DEFINITION = {"name": "w", "nodes": [{"id": "a", "type": "noop"}]}


async def collect(batches: AsyncIterator[list[StreamItem]]) -> list[StreamItem]:
    return [item async for batch in batches for item in batch]


def events_of(run_id: str, steps: int) -> list[Event]:
    payloads: list[Payload] = [RunSubmitted(run_id, DEFINITION, {}, ["noop"])]
    for i in range(steps):
        payloads.append(NodeScheduled(run_id, "a", "noop", i, 1, {}, {}))
        payloads.append(NodeCompleted(run_id, "a", i, 1, i))
    payloads.append(RunCompleted(run_id, steps))
    return [
        Event(str(uuid.uuid4()), run_id, 1_700_000_000_000 + n, p, "t", None, "test")
        for n, p in enumerate(payloads)
    ]


async def test_one_kafka_reader_serves_every_subscriber(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = f"aob.runs.fanout-{uuid.uuid4().hex[:8]}"
    runs = ["run_k1", "run_k2"]
    planned = {run_id: events_of(run_id, 6) for run_id in runs}
    async with (
        await KafkaEventLog.open(kafka_bootstrap) as writer,
        await KafkaEventLog.open(kafka_bootstrap, client_id="fanout") as reader,
    ):
        await writer.create_topic(topic, 3)
        # Each run's first events exist before the hub starts: they are history.
        await writer.append([Append(topic, e.key, encode(e)) for r in runs for e in planned[r][:3]])
        read_models = SqliteReadModels.open(tmp_path / "rm.db")  # empty: history from the log
        hub = FanoutHub(reader, read_models, topic=topic)
        await hub.start()
        try:
            early = [
                asyncio.create_task(collect(hub.stream(r, after=-1)))
                for r in runs
                for _ in range(5)
            ]
            await asyncio.sleep(0.5)
            for step in range(3, 15, 4):
                await writer.append(
                    [
                        Append(topic, e.key, encode(e))
                        for r in runs
                        for e in planned[r][step : step + 4]
                    ]
                )
                await asyncio.sleep(0.2)
            late = await collect(hub.stream(runs[0], after=-1))
            results = await asyncio.wait_for(asyncio.gather(*early), timeout=60)
        finally:
            await hub.stop()
            read_models.close()

    for index, items in enumerate([*results, late]):
        run_id = runs[0] if index == len(results) else runs[index // 5]
        got = [i for i in items if isinstance(i, RunEvent)]
        assert [e.event_id for e in got] == [e.event_id for e in planned[run_id]]
        assert got == sorted(got, key=lambda e: e.offset)
        assert items[-1] == StreamEnd(run_id, "completed", got[-1].offset)
