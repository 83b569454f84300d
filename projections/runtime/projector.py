"""Feeds the read models from the log, and lets readers wait until they caught up.

`ProjectorHost` applies records to the store. `ReadYourWrites` is what a writer uses
to read its own write: it waits until the store's positions reach the write's, from
any process (it asks the store), or at once from the local projector when there is one.

A record the projector cannot decode or apply while the store answers is poison: it
is set aside (`deadletter`), its run fails, and the others are applied. The store's
positions move past it with the next record applied in its partition (the run's
`RunFailed` follows it in its own partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol

from aob.events.codec import decode
from aob.events.log.consumer import Consumer
from aob.events.log.port import Append, EventLog, Record, TopicPartition
from aob.events.types import RUNS_TOPIC, WORKFLOWS_TOPIC, Event
from aob.projections.runtime.deadletter import dead_letter, describe

log = logging.getLogger(__name__)

GROUP = "aob-projector"
PROJECTED_TOPICS = (RUNS_TOPIC, WORKFLOWS_TOPIC)
# How long the projector lets records gather once some arrived. The read models trail
# the log by this much more; in exchange the hosts that move runs on go first (in one
# process they share the event loop), and a run's events are applied in a few
# transactions instead of one per append (bench/core.py: a run alone made 16).
LINGER_S: Final = 0.002


class OffsetsSource(Protocol):
    async def offsets(self) -> dict[TopicPartition, int]: ...


class ReadModelStore(OffsetsSource, Protocol):
    """What the projector needs of a read-model store (`AsyncReadModels` is one)."""

    async def apply(self, batch: Sequence[tuple[Record, Event]]) -> None: ...

    async def advance(self, positions: Mapping[TopicPartition, int]) -> None: ...


def reached(positions: Mapping[TopicPartition, int], wanted: Mapping[TopicPartition, int]) -> bool:
    return all(positions.get(tp, 0) >= offset for tp, offset in wanted.items())


def after(records: Iterable[Record]) -> dict[TopicPartition, int]:
    """The positions just past `records`: what a store must reach to include them."""
    # Keyed by plain tuples meanwhile: a TopicPartition per record cost more than the rest.
    offsets: dict[tuple[str, int], int] = {}
    for record in records:
        tp = (record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return {TopicPartition(topic, partition): end for (topic, partition), end in offsets.items()}


class ProjectorHost:
    """Applies log records to a read-model store; its positions live in that store.

    The store writes rows and positions in one transaction, so the read models
    are exactly-once whatever the log's group offsets say. Projectors share the
    partitions as the `aob-projector` consumer group: a projector that gains a
    partition reads it from the store's position for it (`on_assigned`), so a
    partition moving between projectors is neither skipped nor applied twice.
    """

    def __init__(
        self,
        event_log: EventLog,
        store: ReadModelStore,
        *,
        max_records: int = 1000,
        linger: float = LINGER_S,
    ) -> None:
        self.log = event_log
        self.store = store
        self.linger = linger
        self.consumer = Consumer(
            event_log, GROUP, PROJECTED_TOPICS, max_records=max_records, listener=self
        )
        # What the store holds: the consumer's positions run ahead while a batch applies.
        self.applied: dict[TopicPartition, int] = {}
        self._progress = asyncio.Condition()

    async def start(self) -> None:
        await self.consumer.start()

    async def close(self) -> None:
        """Leave the group: the partitions go to the other projectors."""
        await self.consumer.close()

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        """Read gained partitions from where the store is (another projector may have
        applied them since this one last did)."""
        stored = await self.store.offsets()
        for tp in partitions:
            self.consumer.seek(tp, stored.get(tp, 0))
        async with self._progress:
            self.applied.update({tp: stored.get(tp, 0) for tp in partitions})
            self._progress.notify_all()

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        """Nothing to settle: every applied batch is in the store with its positions."""

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.step(timeout=0.5)
        finally:
            await self.close()

    async def step(self, timeout: float = 0.0) -> int:
        """Project what is there to read now (waiting up to `timeout` s for something,
        then `linger` s for more); returns how many records were read."""
        records = await self.consumer.poll(timeout=timeout)
        if records and self.linger > 0:
            await asyncio.sleep(self.linger)
            records += await self.consumer.poll(timeout=0)
        if records:
            await self._apply(records)
            await self._applied(after(records))
        else:
            await self._skipped()
        return len(records)

    async def _applied(self, positions: Mapping[TopicPartition, int]) -> None:
        async with self._progress:
            self.applied.update(positions)
            self._progress.notify_all()

    async def _skipped(self) -> None:
        """Positions the consumer passed with no record to apply (Kafka's transaction
        markers take offsets): the store records them too, or a reader waiting for
        the log's end offsets would wait for records that never come."""
        applied = self.applied
        ahead = {tp: at for tp, at in self.consumer.positions.items() if at > applied.get(tp, 0)}
        if ahead:
            await self.store.advance(ahead)
            await self._applied(ahead)

    async def _apply(self, records: list[Record]) -> None:
        batch: list[tuple[Record, Event]] = []
        poison: list[Append] = []
        for record in records:
            try:
                batch.append((record, decode(record.value)))
            except Exception as error:
                log.error("set aside an undecodable record at %s: %s", _at(record), error)
                poison += dead_letter(record, GROUP, describe(error))
        try:
            await self.store.apply(batch)
        except Exception:
            await self.store.offsets()  # raises when the store is down: not a record's fault
            poison += await self._apply_one_by_one(batch)
        if poison:
            await self.log.append(poison)
            # Past the poison now, not with the next good record: a restart would set it
            # aside again, and readers would wait for a position the store never took.
            await self.store.advance(after(records))

    async def _apply_one_by_one(self, batch: list[tuple[Record, Event]]) -> list[Append]:
        """Apply a batch that failed record by record, setting aside the ones that fail
        while the store answers (each in its own transaction, so nothing half-applied)."""
        poison: list[Append] = []
        for record, event in batch:
            try:
                await self.store.apply([(record, event)])
            except Exception as error:
                await self.store.offsets()  # the store went down meanwhile: raise that
                log.exception("cannot project %s at %s", event.type, _at(record))
                poison += dead_letter(record, GROUP, describe(error), what=event.type)
        return poison

    async def wait_until(self, offsets: Mapping[TopicPartition, int], timeout: float = 5.0) -> bool:
        """Wait until the read models include every record before `offsets`."""
        async with self._progress:
            try:
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: reached(self.applied, offsets)), timeout
                )
            except TimeoutError:
                return False
        return True


class ReadYourWrites:
    """Waits until the read models include given log positions.

    Without a local projector it watches the store's own positions: one poller per
    process, running only while someone waits, so waiting callers cost the store one
    cheap query per `interval` whatever their number.
    """

    def __init__(
        self,
        event_log: EventLog,
        store: OffsetsSource,
        local: ProjectorHost | None = None,
        *,
        interval: float = 0.01,
    ) -> None:
        self.log = event_log
        self.store = store
        self.local = local
        self.interval = interval
        self._seen: dict[TopicPartition, int] = {}
        self._changed = asyncio.Condition()
        self._waiting = 0
        self._poller: asyncio.Task[None] | None = None

    async def wait_for(self, records: Iterable[Record], timeout: float = 5.0) -> bool:
        """Wait until the read models include `records`; False after `timeout` s."""
        return await self.wait_until(after(records), timeout)

    async def wait_caught_up(self, timeout: float = 5.0) -> bool:
        """Wait until the read models include everything appended so far."""
        ends: dict[TopicPartition, int] = {}
        for topic in PROJECTED_TOPICS:
            for partition, end in (await self.log.end_offsets(topic)).items():
                ends[TopicPartition(topic, partition)] = end
        return await self.wait_until(ends, timeout)

    async def wait_until(self, offsets: Mapping[TopicPartition, int], timeout: float = 5.0) -> bool:
        if self.local is not None:
            return await self.local.wait_until(offsets, timeout)
        if reached(self._seen, offsets):  # positions only grow
            return True
        async with self._changed:
            self._waiting += 1
            if self._poller is None or self._poller.done():
                self._poller = asyncio.create_task(self._poll())
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: reached(self._seen, offsets)), timeout
                )
            except TimeoutError:
                return False
            finally:
                self._waiting -= 1
        return True

    async def _poll(self) -> None:
        while self._waiting:
            try:
                seen = await self.store.offsets()
            except Exception as error:  # the store is down: waiters time out, not crash
                log.warning("cannot read the read models' positions: %s", error)
            else:
                async with self._changed:
                    self._seen = seen
                    self._changed.notify_all()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller


def _at(record: Record) -> str:
    return f"{record.topic}/{record.partition}@{record.offset}"
