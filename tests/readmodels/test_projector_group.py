"""Projectors share the log's partitions: each record is applied by one projector,
and a partition that moves on is read from the store's position for it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from aob.events.codec import encode
from aob.events.log.port import Append, Record, TopicPartition
from aob.events.log.sqlite import SqliteEventLog
from aob.events.types import RUNS_TOPIC, WORKFLOWS_TOPIC, Event, RunSubmitted
from aob.projections.readmodels.port import AsyncReadModels, ThreadedReadModels
from aob.projections.runtime.projector import ProjectorHost


class Counting:
    """A store that counts which records each projector applies."""

    def __init__(self, inner: AsyncReadModels, applied: Counter[tuple[int, int]]) -> None:
        self.inner = inner
        self.applied = applied

    async def apply(self, batch: Sequence[tuple[Record, Event]]) -> None:
        await self.inner.apply(batch)
        self.applied.update((record.partition, record.offset) for record, _ in batch)

    async def advance(self, positions: Mapping[TopicPartition, int]) -> None:
        await self.inner.advance(positions)

    async def offsets(self) -> dict[TopicPartition, int]:
        return await self.inner.offsets()


def submitted(run_id: str) -> Append:
    definition = {"name": "w", "nodes": [{"id": "a", "type": "noop"}]}
    event = Event(f"ev-{run_id}", run_id, 1, RunSubmitted(run_id, definition, {}, ["noop"]))
    return Append(RUNS_TOPIC, run_id, encode(event))


async def test_two_projectors_apply_each_record_once(tmp_path: Path) -> None:
    log = await SqliteEventLog.open(tmp_path / "log.db")
    await log.create_topic(RUNS_TOPIC, 4)
    await log.create_topic(WORKFLOWS_TOPIC, 1)
    store = await ThreadedReadModels.open(tmp_path / "rm.db")
    by_a: Counter[tuple[int, int]] = Counter()
    by_b: Counter[tuple[int, int]] = Counter()
    a = ProjectorHost(log, Counting(store, by_a))
    b = ProjectorHost(log, Counting(store, by_b))
    try:
        await a.start()
        await b.start()
        async with asyncio.timeout(30):
            while not (a.consumer.assignment and b.consumer.assignment):
                await asyncio.gather(a.step(timeout=0.05), b.step(timeout=0.05))
        assert not a.consumer.assignment & b.consumer.assignment

        first = await log.append([submitted(f"run-{i}") for i in range(40)])
        async with asyncio.timeout(30):
            while sum((by_a + by_b).values()) < 40:
                await asyncio.gather(a.step(timeout=0.05), b.step(timeout=0.05))
        await b.close()  # b leaves: a reads b's partitions from the store's positions
        second = await log.append([submitted(f"run-{i}") for i in range(40, 80)])
        async with asyncio.timeout(30):
            while sum((by_a + by_b).values()) < 80:
                await a.step(timeout=0.05)
        both = by_a + by_b
        assert by_b  # b did its share before it left
        assert set(both) == {(r.partition, r.offset) for r in first + second}
        assert max(both.values()) == 1  # nothing applied twice
        assert await store.get_run("run-79") is not None
    finally:
        await a.close()
        await b.close()
        await store.close()
        await log.close()
