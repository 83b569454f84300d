"""Feeds the read models from the log, and lets readers wait until they caught up."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Protocol

from aob.events.codec import decode
from aob.events.log.consumer import Consumer
from aob.events.log.port import EventLog, Record, TopicPartition
from aob.events.types import RUNS_TOPIC, WORKFLOWS_TOPIC, Event

GROUP = "aob-projector"


class ReadModelStore(Protocol):
    """What the projector needs of a read-model store."""

    def apply(self, batch: Sequence[tuple[Record, Event]]) -> None: ...

    def offsets(self) -> dict[TopicPartition, int]: ...


class ProjectorHost:
    """Applies log records to a read-model store; its positions live in that store.

    The store writes rows and positions in one transaction, so the read models
    are exactly-once whatever the log's group offsets say.
    """

    def __init__(self, event_log: EventLog, store: ReadModelStore, *, max_records: int = 1000) -> None:
        self.log = event_log
        self.store = store
        self.consumer = Consumer(event_log, GROUP, [RUNS_TOPIC, WORKFLOWS_TOPIC], max_records=max_records)
        self._progress = asyncio.Condition()

    async def start(self) -> None:
        await self.consumer.start(start_from=self.store.offsets())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step(timeout=0.5)

    async def step(self, timeout: float = 0.0) -> int:
        """Project what is there to read now; returns how many records were applied."""
        records = await self.consumer.poll(timeout=timeout)
        if records:
            self.store.apply([(record, decode(record.value)) for record in records])
            async with self._progress:
                self._progress.notify_all()
        return len(records)

    async def wait_until(self, offsets: Mapping[TopicPartition, int], timeout: float = 5.0) -> bool:
        """Wait until the read models include every record before `offsets`."""

        def reached() -> bool:
            positions = self.consumer.positions
            return all(positions.get(tp, 0) >= offset for tp, offset in offsets.items())

        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(reached), timeout)
            except TimeoutError:
                return False
        return True

    async def wait_caught_up(self, timeout: float = 5.0) -> bool:
        """Wait until the read models include everything appended so far."""
        ends: dict[TopicPartition, int] = {}
        for topic in self.consumer.topics:
            for partition, end in (await self.log.end_offsets(topic)).items():
                ends[TopicPartition(topic, partition)] = end
        return await self.wait_until(ends, timeout)
