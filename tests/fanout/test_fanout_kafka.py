"""The fanout hub in cluster mode: one Kafka reader serves every local subscriber."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from functools import partial
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
from tests.fanout.live import until

DEFINITION = {"name": "w", "nodes": [{"id": "a", "type": "noop"}]}


async def collect(batches: AsyncIterator[list[StreamItem]]) -> list[StreamItem]:
    return [item async for batch in batches for item in batch]


class Collector:
    """Reads a stream into `items` in the background, so a test can wait on its progress."""

    def __init__(self, batches: AsyncIterator[list[StreamItem]]) -> None:
        self.items: list[StreamItem] = []
        self.task = asyncio.create_task(self._read(batches))

    async def _read(self, batches: AsyncIterator[list[StreamItem]]) -> list[StreamItem]:
        async for batch in batches:
            self.items.extend(batch)
        return self.items

    @property
    def events(self) -> int:
        return sum(isinstance(item, RunEvent) for item in self.items)


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
            early = [Collector(hub.stream(r, after=-1)) for r in runs for _ in range(5)]

            async def every_early_stream_has(count: int) -> bool:
                return hub.subscribers == len(early) and all(c.events >= count for c in early)

            # Each batch goes out once every early subscriber has what came before it:
            # history first, then live events in steps.
            await until(partial(every_early_stream_has, 3), "history delivered")
            for step in range(3, 15, 4):
                await writer.append(
                    [
                        Append(topic, e.key, encode(e))
                        for r in runs
                        for e in planned[r][step : step + 4]
                    ]
                )
                delivered = min(step + 4, len(planned[runs[0]]))
                if delivered < len(planned[runs[0]]):  # the last batch ends the streams
                    await until(partial(every_early_stream_has, delivered), f"{delivered} events")
            late = await collect(hub.stream(runs[0], after=-1))
            results = await asyncio.wait_for(asyncio.gather(*(c.task for c in early)), timeout=60)
        finally:
            await hub.stop()
            read_models.close()

    for index, items in enumerate([*results, late]):
        run_id = runs[0] if index == len(results) else runs[index // 5]
        got = [i for i in items if isinstance(i, RunEvent)]
        assert [e.event_id for e in got] == [e.event_id for e in planned[run_id]]
        assert got == sorted(got, key=lambda e: e.offset)
        assert items[-1] == StreamEnd(run_id, "completed", got[-1].offset)
