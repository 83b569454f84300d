"""Hosts the coordinator fold on an event log (the embedded default's and the cluster's).

Consumes the partitions of `aob.runs` it owns, folds each event into its run's state
and appends what the fold emits: run events back to `aob.runs`, and each
`NodeScheduled` also to its `aob.tasks.<type>` topic as the worker's work item.
Run states live per partition in a compacted changelog (`aob.projections.runtime.
changelog`): each batch appends the states it changed, a tombstone for each run it
finished and the partition's position marker, in the same commit as the emitted
events and the consumer offsets. So a host that starts, or is assigned a partition,
reads the partition's live states from the changelog and folds nothing again (or
only what lies between the marker and the committed offset): it takes time in
proportion to the active runs, not to history. A finished run leaves memory and,
once compacted, the changelog; its later events find no state and change nothing,
and its `RunSubmitted` lies behind the committed offset, never read again.

A record it cannot decode, or whose fold or emitted events fail (a bug, an event too
deep to encode), is set aside (`deadletter`): its run fails with the reason, its
state is dropped (the fold may have changed it halfway), and every other run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Final

from aob.events.codec import decode, encode
from aob.events.ids import derived_event_id
from aob.events.log.bounded import oversize
from aob.events.log.consumer import Consumer
from aob.events.log.port import Append, EventLog, Record, TopicPartition
from aob.events.partitioner import partition_for
from aob.events.tracing import traced
from aob.events.types import (
    EXPRESSIONS_TOPIC,
    RUNS_TOPIC,
    Event,
    ExpressionRequested,
    NodeScheduled,
    RunFailed,
    task_topic,
)
from aob.projections.coordinator.fold import fold
from aob.projections.coordinator.state import RunState
from aob.projections.runtime.changelog import (
    CHANGELOG_TOPIC,
    compact_changelog,
    position_entry,
    read_partition,
    state_entry,
    tombstone,
)
from aob.projections.runtime.deadletter import dead_letter, describe

log = logging.getLogger(__name__)

GROUP = "aob-coordinator"
# Changelog records appended between two compactions of the embedded log (at least;
# twice the live runs when there are more): restore reads at most this many extra.
COMPACT_EVERY: Final = 10_000
_REFOLD_BATCH: Final = 1000


class ChangelogMismatch(RuntimeError):
    """The changelog's partitions do not match `aob.runs`'s: run states would be lost."""


class CoordinatorHost:
    """Run states of the owned partitions in memory, restored from the changelog."""

    def __init__(
        self,
        event_log: EventLog,
        *,
        max_records: int = 500,
        max_event_bytes: int | None = None,
        compact_every: int = COMPACT_EVERY,
    ) -> None:
        self.log = event_log
        # Emitted events over this fail their run here, rather than stall the batch
        # the log would refuse (None: the log's own bound is the only check).
        self.max_event_bytes = max_event_bytes
        self.compact_every = compact_every
        self.consumer = Consumer(event_log, GROUP, [RUNS_TOPIC], max_records=max_records)
        self.states: dict[str, RunState] = {}
        self.owned: frozenset[int] = frozenset()  # partitions of aob.runs
        self.partitions = 0  # of aob.runs (and of the changelog)
        # What restores cost so far, in records: of the changelog, and of aob.runs
        # folded again (between a partition's marker and its committed offset).
        self.restored_records = 0
        self.refolded_records = 0
        # Positions in aob.runs of events this host appended and has not read back yet.
        self._own: set[tuple[int, int]] = set()
        # Runs whose state the batch at hand changed (their changelog record is due).
        self._dirty: set[str] = set()
        self._unpacked = 0  # changelog records appended since the last compaction

    # --- partitions: restore and release ------------------------------------------------

    async def recover(self) -> None:
        """Start reading, and restore every partition the consumer holds."""
        await self.consumer.start()
        self.partitions = await self.log.partitions(RUNS_TOPIC)
        changelog = await self.log.partitions(CHANGELOG_TOPIC)
        if changelog != self.partitions:
            raise ChangelogMismatch(
                f"{CHANGELOG_TOPIC} has {changelog} partitions and {RUNS_TOPIC} "
                f"{self.partitions}: they must be equal (run states are kept per partition)"
            )
        await self.restore(frozenset(self.consumer.positions))

    async def restore(self, partitions: frozenset[TopicPartition]) -> None:
        """Take over `partitions` of aob.runs: their live runs' states from the changelog,
        then the fold of whatever lies between its marker and the committed offset."""
        owned = sorted(tp.partition for tp in partitions if tp.topic == RUNS_TOPIC)
        appends: list[Append] = []
        for partition in owned:
            appends += await self._restore_partition(TopicPartition(RUNS_TOPIC, partition))
        self.owned = self.owned | frozenset(owned)
        if appends:
            # States rebuilt by folding go to the changelog now: the next restore reads them.
            await self.consumer.commit(appends)
            self._unpacked += len(appends)

    def release(self, partitions: frozenset[TopicPartition]) -> None:
        """Let `partitions` go: their runs leave memory (their states are in the
        changelog, committed with the last batch). Their timers stop firing here."""
        gone = {tp.partition for tp in partitions if tp.topic == RUNS_TOPIC}
        self.owned = self.owned - gone
        for run_id in [r for r in self.states if self.partition_of(r) in gone]:
            del self.states[run_id]
        self._own = {p for p in self._own if p[0] not in gone}

    def owns(self, run_id: str) -> bool:
        """Whether this host owns `run_id`'s partition (and so fires its timers)."""
        return self.partitions > 0 and self.partition_of(run_id) in self.owned

    def partition_of(self, run_id: str) -> int:
        return partition_for(run_id, self.partitions)

    async def _restore_partition(self, tp: TopicPartition) -> list[Append]:
        restored = await read_partition(self.log, tp.partition)
        self.restored_records += restored.records
        self.states.update(restored.states)
        committed = self.consumer.positions.get(tp, 0)
        start = restored.position if restored.position is not None else 0
        if start >= committed:
            # The changelog is ahead of the offsets only when a batch's records were
            # appended but its commit was lost (Kafka without transactions): that
            # batch is folded already, reading it again would fold it twice.
            _seek(self.consumer, tp, start)
            return []
        persisted = set(restored.states)
        await self._refold(tp, start, committed)
        appends = self._changelog(persisted)
        appends.append(position_entry(tp.partition, self.partitions, committed))
        return appends

    async def _refold(self, tp: TopicPartition, start: int, end: int) -> None:
        """Fold `tp` from `start` to `end` again; what it emits was appended before
        (appends and offsets are committed together), so it is discarded."""
        offset = start
        while offset < end:
            records = await self.log.read(tp.topic, tp.partition, offset, _REFOLD_BATCH)
            for record in records:
                if record.offset >= end:
                    break
                self.refolded_records += 1
                self._refold_record(record)
            offset = records[-1].offset + 1 if records else end

    # --- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            records = await self.consumer.poll(timeout=0.5)
            if records:
                await self.step(records)
            if self._unpacked >= max(self.compact_every, 2 * len(self.states)):
                await compact_changelog(self.log)
                self._unpacked = 0

    async def step(self, records: list[Record]) -> None:
        """Fold a batch; append what it emitted, its changelog records and the consumer
        offsets in one commit."""
        persisted = {r.key for r in records if r.key in self.states}
        appends = self.handle(records)
        changelog = self._changelog(persisted)
        changelog += self._markers(records)
        written = await self.consumer.commit(appends + changelog)
        self._unpacked += len(changelog)
        self._own.update((r.partition, r.offset) for r in written if r.topic == RUNS_TOPIC)

    def _changelog(self, persisted: set[str]) -> list[Append]:
        """The changelog records of the runs the batch changed: a live run's state, a
        tombstone for a stored run that finished (one that started and finished in the
        batch was never stored). A state that cannot be stored fails its run."""
        appends: list[Append] = []
        for run_id in sorted(self._dirty):
            state = self.states.get(run_id)
            if state is not None:
                entry = self._state_entry(state)
                if entry is not None:
                    appends.append(entry)
                    continue
                appends += self._set_aside_state(run_id)
            if run_id in persisted:
                appends.append(tombstone(run_id))
        self._dirty.clear()
        return appends

    def _state_entry(self, state: RunState) -> Append | None:
        try:
            entry = state_entry(state)
        except Exception as error:
            log.error("cannot store the state of run %s: %s", state.run_id, describe(error))
            return None
        if self._oversize([entry]) is not None:
            log.error("the state of run %s is over the event bound", state.run_id)
            return None
        return entry

    def _set_aside_state(self, run_id: str) -> list[Append]:
        """A run whose state cannot be stored fails: no restore could go on with it."""
        state = self.states.pop(run_id)
        error = "its coordinator state cannot be stored (too large or not serialisable)"
        failed = Event(
            # The same id whichever batch finds it: a replay appends a duplicate only.
            event_id=derived_event_id(f"{GROUP}:{run_id}:r{state.revision}", "unstorable"),
            key=run_id,
            occurred_at=time.time_ns() // 1_000_000,
            payload=RunFailed(run_id, error),
            actor=f"service:{GROUP}",
        )
        return [Append(RUNS_TOPIC, run_id, encode(failed))]

    def _markers(self, records: Iterable[Record]) -> list[Append]:
        positions = self.consumer.positions
        read = sorted({r.partition for r in records if r.topic == RUNS_TOPIC})
        return [
            position_entry(p, self.partitions, positions[TopicPartition(RUNS_TOPIC, p)])
            for p in read
        ]

    def handle(self, records: list[Record]) -> list[Append]:
        """Fold a batch of records; the appends they lead to."""
        appends: list[Append] = []
        own = self._own
        for record in records:
            position = (record.partition, record.offset)
            if position in own:
                # The fold applied this event when it emitted it: reading it back would
                # only be recognised as a duplicate, after paying for its decoding.
                own.discard(position)
                continue
            appends.extend(self._handle(record))
        return appends

    def _handle(self, record: Record) -> list[Append]:
        """What folding one record leads to; poison is set aside, never raised."""
        try:
            event = decode(record.value)
        except Exception as error:
            log.error("set aside an undecodable record at %s: %s", _at(record), error)
            self._drop(record.key)
            return dead_letter(record, GROUP, describe(error))
        try:
            appends = self._appends(self._fold(event))
            problem = self._oversize(appends)
            if problem is None:
                return appends
            log.error("set aside %s %s: %s", event.type, event.event_id, problem)
            self._drop(event.key)
            return dead_letter(record, GROUP, problem, what=event.type)
        except Exception as error:
            # The run's trace only around the log line: set around every fold it
            # cost ~6% of handle() (time CoordinatorHost.handle over a batch).
            with traced(event.trace_id, event.key):
                log.exception("fold failed on %s %s", event.type, event.event_id)
            self._drop(event.key)
            return dead_letter(record, GROUP, describe(error), what=event.type)

    def _oversize(self, appends: list[Append]) -> str | None:
        return None if self.max_event_bytes is None else oversize(appends, self.max_event_bytes)

    @staticmethod
    def _appends(emitted: list[Event]) -> list[Append]:
        """`emitted` encoded (all or none: an encoding error raises before any is kept)."""
        appends: list[Append] = []
        for event in emitted:
            data = encode(event)
            appends.append(Append(RUNS_TOPIC, event.key, data))
            if isinstance(event.payload, NodeScheduled):
                appends.append(Append(task_topic(event.payload.node_type), event.key, data))
            elif isinstance(event.payload, ExpressionRequested):
                appends.append(Append(EXPRESSIONS_TOPIC, event.key, data))
        return appends

    def _refold_record(self, record: Record) -> None:
        """Fold a record read again at restore; what it emitted was appended before.
        A poison record was set aside then, and its run failed: it only ends the run."""
        try:
            self._fold(decode(record.value))
        except Exception as error:
            log.warning("restore: skipped poison at %s: %s", _at(record), describe(error))
            self._drop(record.key)

    def _drop(self, run_id: str) -> None:
        """Forget a run whose state a failure may have left half-changed; its
        `RunFailed` is on its way, and later events of a run without a state change
        nothing."""
        if run_id and self.states.pop(run_id, None) is not None:
            self._dirty.add(run_id)

    def _fold(self, event: Event) -> list[Event]:
        before = self.states.get(event.key)
        # An event the state has seen changes nothing; any other one changes it (if
        # only by being seen), and the run's changelog record is due.
        changes = before is None or event.event_id not in before.seen
        state, emitted = fold(before, event)
        if state is None:
            return emitted  # not a run this host knows (never submitted, or finished)
        if state.is_finished:
            # Later events of a finished run change nothing: it leaves memory, and its
            # tombstone the changelog.
            self.states.pop(event.key, None)
        else:
            self.states[event.key] = state
        if changes:
            self._dirty.add(event.key)
        return emitted


def _seek(consumer: Consumer, tp: TopicPartition, offset: int) -> None:
    """Place `consumer` at `offset` of `tp` (Consumer.seek where it exists)."""
    seek = getattr(consumer, "seek", None)
    if seek is not None:
        seek(tp, offset)
    else:  # the consumer before group membership: positions are a plain dict
        consumer._positions[tp] = offset


def _at(record: Record) -> str:
    return f"{record.topic}/{record.partition}@{record.offset}"
