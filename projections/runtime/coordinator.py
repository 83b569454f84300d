"""Hosts the coordinator fold on an event log (the embedded default's and the cluster's).

Coordinators are members of the consumer group `aob-coordinator`: the group divides the
partitions of `aob.runs` among them, and each folds the events of the partitions it
owns into its runs' states, appending what the fold emits: run events back to
`aob.runs`, and each `NodeScheduled` also to its `aob.tasks.<type>` topic as the
worker's work item. A run's timers are fired by the owner of its partition (`owns`,
and `append_owned` for the `TimerFired` itself).

Run states live per partition in a compacted changelog (`aob.projections.runtime.
changelog`): at most every `changelog_interval` seconds, a batch appends what changed
of its runs' states since the last such write, tombstones for each stored run that
finished and the partitions' position markers, in the same commit as the emitted
events and the consumer offsets (a run that starts and ends between two writes is
never stored). Between writes, a batch that emits nothing commits nothing: its
events are read and folded again after a crash, and emit nothing again. The states
and markers in the changelog always agree with each other (a partition's runs and its
marker are written together), so a restore is exact whatever the interval; it only
folds more (at most an interval's events) the longer the interval. A state that
cannot be stored fails its run when it is due to be written. A partition assigned (`on_assigned`) is
restored from the changelog, then folded from its marker to the committed offset (on
an atomic log: nothing), so restart and rebalance take time in proportion to the
active runs, not to history. What the fold emits for events folded again must be what
the log recorded after them (`divergence`): if the code now decides differently, the
host logs the run and the event, commits nothing of the partition, and `run` raises.
A partition revoked (`on_revoked`) is let go: what is folded is committed already (a
batch is folded and committed under one lock the callbacks also take), its runs leave
memory and their timers stop firing here.

Fencing: every write goes through the group member's fenced commit (Kafka: one
transaction per partition, by a producer whose epoch the next owner bumps; embedded:
ownership checked inside the write's transaction). A host that lost a partition, or
was paused past its session timeout, gets `Fenced` and writes nothing of that commit:
it lets go of the partitions the commit was for and carries on; the next assignment
tells it what it owns. A finished run leaves memory and, once compacted, the
changelog; its later events find no state and change nothing.

Simple work (a transform or noop whose jq is on the sandbox's fast path, a simple
condition or run output) is decided here, in the batch that asks for it: the fold goes
through `runtime.inline.decide` with the `inline` answers (`aob.workers.inline`), whose
events are appended with the rest and whose tasks reach no topic. Restores fold through
it too, so they apply each answer where it was asked and compare it with the log.

A record it cannot decode, or whose fold or emitted events fail (a bug, an event too
deep to encode), is set aside (`deadletter`): its run fails with the reason, its
state is dropped (the fold may have changed it halfway), and every other run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Final

from aob.events.codec import decode, encode
from aob.events.ids import derived_event_id
from aob.events.log.bounded import oversize
from aob.events.log.consumer import Consumer
from aob.events.log.port import (
    POLL_TIMEOUT,
    SESSION_TIMEOUT,
    Append,
    EventLog,
    Fenced,
    Record,
    TopicPartition,
)
from aob.events.partitioner import partition_for
from aob.events.tracing import folded, traced
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
    RunRecord,
    compact_changelog,
    position_entry,
    read_partition,
    run_entries,
    tombstones,
)
from aob.projections.runtime.deadletter import dead_letter, describe
from aob.projections.runtime.divergence import (
    RecoveryDiverged,
    Refolded,
    fresh_cause,
    refold_checked,
    seen_before,
)
from aob.projections.runtime.inline import Inline, decide

log = logging.getLogger(__name__)

GROUP = "aob-coordinator"
# Changelog records appended between two compactions of the embedded log (at least;
# twice the live runs when there are more): restore reads at most this many extra.
COMPACT_EVERY: Final = 10_000
# Seconds between two changelog writes of a partition's changed states. Writing them
# after every batch cost a fifth of the coordinator's CPU (a run's core re-encoded per
# event); a restore folds again at most this long a stretch of events. 0: every batch.
CHANGELOG_INTERVAL: Final = 0.2


class ChangelogMismatch(RuntimeError):
    """The changelog's partitions do not match `aob.runs`'s: run states would be lost."""


class CoordinatorHost:
    """Run states of the owned partitions in memory, restored from the changelog (a
    consumer-group member: `on_assigned` / `on_revoked`)."""

    def __init__(
        self,
        event_log: EventLog,
        *,
        max_records: int = 500,
        max_event_bytes: int | None = None,
        compact_every: int = COMPACT_EVERY,
        changelog_interval: float = CHANGELOG_INTERVAL,
        session_timeout: float = SESSION_TIMEOUT,
        poll_timeout: float = POLL_TIMEOUT,
        inline: Inline | None = None,
    ) -> None:
        self.log = event_log
        self.inline = inline
        # Emitted events over this fail their run here, rather than stall the batch
        # the log would refuse (None: the log's own bound is the only check).
        self.max_event_bytes = max_event_bytes
        self.compact_every = compact_every
        self.changelog_interval = changelog_interval
        self.consumer = Consumer(
            event_log,
            GROUP,
            [RUNS_TOPIC],
            max_records=max_records,
            listener=self,
            session_timeout=session_timeout,
            poll_timeout=poll_timeout,
        )
        self.states: dict[str, RunState] = {}
        # What the changelog holds of each live run (and of a run finished in the batch
        # at hand, until its tombstones are written).
        self.stored: dict[str, RunRecord] = {}
        self.owned: frozenset[int] = frozenset()  # partitions of aob.runs
        self.partitions = 0  # of aob.runs (and of the changelog)
        # What restores cost so far, in records: of the changelog, and of aob.runs
        # folded again (between a partition's marker and its committed offset).
        self.restored_records = 0
        self.refolded_records = 0
        self.fenced = 0  # commits refused because a partition had gone elsewhere
        # A restore whose fold differed from the log: `run` raises it, the host dies.
        self.diverged: RecoveryDiverged | None = None
        # Positions in aob.runs of events this host appended and has not read back yet.
        self._own: set[tuple[int, int]] = set()
        # Runs whose state changed since the changelog was last written.
        self._dirty: set[str] = set()
        # Partitions of aob.runs folded past their changelog marker, and when (loop
        # time) the changelog was last written.
        self._unlogged: set[int] = set()
        # Partitions of aob.runs read (or restored) past their committed offset: a commit
        # carries only these (on Kafka each is a transaction of its own).
        self._uncommitted: set[int] = set()
        self._logged_at = 0.0
        # Changelog records of states a restore folded again, committed with the next
        # batch (the first assignment runs before the consumer may commit).
        self._pending: dict[int, list[Append]] = {}
        self._unpacked = 0  # changelog records appended since the last compaction
        # Folding and committing a batch, and the rebalance callbacks, take turns: a
        # partition is let go only once what was folded of it is committed.
        self._lock = asyncio.Lock()

    # --- group membership ------------------------------------------------------------

    async def recover(self) -> None:
        """Join the group: the partitions it assigns are restored before this returns."""
        self.partitions = await self.log.partitions(RUNS_TOPIC)
        changelog = await self.log.partitions(CHANGELOG_TOPIC)
        if changelog != self.partitions:
            raise ChangelogMismatch(
                f"{CHANGELOG_TOPIC} has {changelog} partitions and {RUNS_TOPIC} "
                f"{self.partitions}: they must be equal (run states are kept per partition)"
            )
        self._logged_at = asyncio.get_running_loop().time()
        await self.consumer.start()
        async with self._lock:
            await self._commit([], self.owned)  # what the first restore folded again

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        async with self._lock:
            for tp in sorted(partitions, key=lambda tp: tp.partition):
                if tp.topic == RUNS_TOPIC and tp.partition not in self.owned:
                    await self.restore(tp)

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        async with self._lock:
            lost = frozenset(tp.partition for tp in partitions if tp.topic == RUNS_TOPIC)
            # Folded batches are committed (under this lock); their states may still wait
            # for the changelog, and states folded again at restore for a commit. The
            # next owner would fold them again: written here, it restores them instead.
            due = lost & (self._pending.keys() | self._unlogged | self._uncommitted)
            await self._commit(self._changelog_of(lost & self._unlogged), due)
            self.release(lost)

    async def close(self) -> None:
        """Write the changelog's due states, then leave the group: the partitions go
        to the other members at once."""
        try:
            await self.write_changelog()
        except Exception as error:  # the log is gone: a restore folds the rest again
            log.warning("coordinator closing without writing its changelog: %s", error)
        await self.consumer.close()

    def owns(self, run_id: str) -> bool:
        """Whether this host owns `run_id`'s partition (and so fires its timers)."""
        return self.partitions > 0 and self.partition_of(run_id) in self.owned

    def partition_of(self, run_id: str) -> int:
        return partition_for(run_id, self.partitions)

    # --- partitions: restore and release -------------------------------------------------

    async def restore(self, tp: TopicPartition) -> None:
        """Take over partition `tp` of aob.runs: its live runs' states from the changelog,
        then the fold of whatever lies between its marker and the committed offset."""
        restored = await read_partition(self.log, tp.partition)
        self.restored_records += restored.read
        self.states.update(restored.states)
        self.stored.update(restored.records)
        self.owned = self.owned | {tp.partition}
        committed = await self._committed(tp)
        start = restored.position if restored.position is not None else 0
        if start >= committed:
            # The changelog is ahead of the offsets only when a batch's records were
            # appended but its commit was lost (a log without atomic commits): that
            # batch is folded already, reading it again would fold it twice.
            self.consumer.seek(tp, start)
            if start > committed:
                self._uncommitted.add(tp.partition)
            return
        if not await self._refold(tp, start, committed):
            self.release({tp.partition})  # nothing of it is committed: the host stops
            return
        # States rebuilt by folding go to the changelog with the next commit.
        pending = self._changelog(frozenset({tp.partition}))
        pending.append(position_entry(tp.partition, self.partitions, committed))
        self._pending.setdefault(tp.partition, []).extend(pending)
        log.info(
            "coordinator owns %s[%d]: %d runs, %d changelog records read, %d events refolded",
            tp.topic,
            tp.partition,
            len(restored.states),
            restored.read,
            committed - start,
        )

    async def _committed(self, tp: TopicPartition) -> int:
        positions = self.consumer.positions  # from the committed offsets, once joined
        if tp in positions:
            return positions[tp]
        return (await self.log.committed(GROUP, tp.topic)).get(tp.partition, 0)

    def release(self, partitions: Iterable[int] | frozenset[TopicPartition]) -> None:
        """Let `partitions` (of aob.runs) go: their runs leave memory (their states are
        in the changelog, committed with the last batch). Their timers stop firing here."""
        gone = {p.partition if isinstance(p, TopicPartition) else p for p in partitions}
        self.owned = self.owned - gone
        for run_id in [r for r in self.states if self.partition_of(r) in gone]:
            del self.states[run_id]
        for run_id in [r for r in self.stored if self.partition_of(r) in gone]:
            del self.stored[run_id]
        self._own = {p for p in self._own if p[0] not in gone}
        self._dirty = {r for r in self._dirty if self.partition_of(r) not in gone}
        self._unlogged -= gone
        self._uncommitted -= gone
        for partition in gone:
            self._pending.pop(partition, None)

    async def _refold(self, tp: TopicPartition, start: int, end: int) -> bool:
        """Fold `tp` from `start` to `end` again. What it emits was appended before
        (appends and offsets are committed together): it must be what the log recorded,
        else the run would silently diverge. False (and `diverged` set) if it is not."""
        divergence = await refold_checked(
            self.log, tp, start, end, self._refold_record, set_aside_by=f"service:{GROUP}"
        )
        if divergence is not None:
            diverged = RecoveryDiverged(divergence)
            log.critical("coordinator restoring %s[%d]: %s", tp.topic, tp.partition, diverged)
            self.diverged = self.diverged or diverged  # the first one found is raised
        return divergence is None

    # --- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                if self.diverged is not None:
                    raise self.diverged  # a restore found the fold differs from the log
                records = await self.consumer.poll(timeout=self._poll_timeout())
                if records:
                    await self.step(records)
                elif self._changelog_due():
                    await self.write_changelog()
                if self._unpacked >= max(self.compact_every, 2 * len(self.states)):
                    await compact_changelog(self.log)
                    self._unpacked = 0
        finally:  # leave the group: another member takes the partitions over at once
            await self.close()

    async def step(self, records: list[Record]) -> None:
        """Fold a batch; append what it emitted, the changelog records if due and the
        consumer offsets in one commit (none if there is nothing to append: what was
        folded is folded again after a crash, emitting nothing again). Records of
        partitions let go since they were read are skipped (their new owner reads
        them). A partition restored since then (taken back in a rebalance) restarts
        from its changelog, which the batch follows on from: its records are folded
        once, and read again later only as seen."""
        async with self._lock:
            records = [r for r in records if r.partition in self.owned]
            appends = self.handle(records)
            read = {r.partition for r in records if r.topic == RUNS_TOPIC}
            self._unlogged |= read
            self._uncommitted |= read
            if self._changelog_due():
                appends += self._changelog_of(self._unlogged)
            if appends or self._pending:
                await self._commit(appends, self._uncommitted | self._pending.keys())

    async def write_changelog(self) -> None:
        """Append the changelog records of every state changed since the last write,
        with the offsets (what `step` does once `changelog_interval` has passed)."""
        async with self._lock:
            due = self._uncommitted | self._pending.keys() | self._unlogged
            if due:
                await self._commit(self._changelog_of(self._unlogged), due)

    def _changelog_due(self) -> bool:
        elapsed = asyncio.get_running_loop().time() - self._logged_at
        return bool(self._unlogged) and elapsed >= self.changelog_interval

    def _poll_timeout(self) -> float:
        """Until the changelog is due (if anything waits for it), at most 0.5 s."""
        if not self._unlogged:
            return 0.5
        elapsed = asyncio.get_running_loop().time() - self._logged_at
        return min(0.5, max(0.0, self.changelog_interval - elapsed))

    def _changelog_of(self, partitions: Iterable[int]) -> list[Append]:
        """The changelog records of `partitions` (folded past their markers): their
        changed runs' records and their new markers, written together so that a
        partition's states and marker always agree."""
        partitions = frozenset(partitions)
        if not partitions:
            return []
        entries = self._changelog(partitions)
        positions = self.consumer.positions
        for p in sorted(partitions):
            through = positions[TopicPartition(RUNS_TOPIC, p)]
            entries.append(position_entry(p, self.partitions, through))
        self._unlogged -= partitions
        if not self._unlogged:
            self._logged_at = asyncio.get_running_loop().time()
        return entries

    async def append_owned(self, appends: Sequence[Append]) -> list[Record]:
        """Append run events (a timer's `TimerFired`) for the runs this host owns,
        fenced like its batches; those of other runs are dropped."""
        async with self._lock:
            mine = [a for a in appends if self.owns(a.key)]
            by_partition: dict[TopicPartition, list[Append]] = {}
            for append in mine:
                tp = TopicPartition(RUNS_TOPIC, self.partition_of(append.key))
                by_partition.setdefault(tp, []).append(append)
            if not by_partition:
                return []
            try:
                return await self.consumer.commit(by_partition, offsets={})
            except Fenced as error:
                self._fenced(error, {tp.partition for tp in by_partition})
                return []

    async def _commit(self, appends: list[Append], partitions: Iterable[int]) -> None:
        """Commit `appends` (with what restores left pending) and the positions of
        `partitions`. Fenced: those partitions, and those of the appends, are let go;
        nothing of it is written."""
        partitions = frozenset(partitions)
        pending = [a for p in sorted(partitions) for a in self._pending.pop(p, [])]
        appends = pending + appends
        if not appends and not partitions:
            return
        owned = [TopicPartition(RUNS_TOPIC, p) for p in partitions]
        try:
            written = await self.consumer.commit(appends, partitions=owned)
        except Fenced as error:
            # Every partition it wrote for: the records of those it only logged count
            # as written in `stored`, and must be read back from the changelog.
            self._fenced(error, partitions | {self.partition_of(a.key) for a in appends})
            return
        self._uncommitted -= partitions
        self._unpacked += sum(1 for a in appends if a.topic == CHANGELOG_TOPIC)
        self._own.update((r.partition, r.offset) for r in written if r.topic == RUNS_TOPIC)

    def _fenced(self, error: Fenced, partitions: Iterable[int]) -> None:
        """Another member owns (some of) `partitions` now: what this host folded of them
        may be ahead of the log, so it lets them all go. The rebalance that fenced it
        assigns it its share again, restored from the changelog."""
        self.fenced += 1
        log.warning("coordinator fenced, letting its partitions go: %s", error)
        self.release(frozenset(partitions))

    def _changelog(self, partitions: frozenset[int]) -> list[Append]:
        """The changelog records of the changed runs of `partitions`: what changed of a
        live run's state, tombstones for a stored run that finished (one that started
        and finished since the last write was never stored). A state that cannot be
        stored fails its run."""
        appends: list[Append] = []
        due = sorted(r for r in self._dirty if self.partition_of(r) in partitions)
        for run_id in due:
            state = self.states.get(run_id)
            if state is not None:
                entries = self._state_entries(state)
                if entries is not None:
                    appends += entries
                    continue
                appends += self._set_aside_state(run_id)
            record = self.stored.pop(run_id, None)
            if record is not None:
                appends += tombstones(run_id, record)
        self._dirty.difference_update(due)
        return appends

    def _state_entries(self, state: RunState) -> list[Append] | None:
        record = self.stored.setdefault(state.run_id, RunRecord())
        try:
            entries = run_entries(state, record, self.partitions)
        except Exception as error:
            log.error("cannot store the state of run %s: %s", state.run_id, describe(error))
            return None
        problem = self._oversize(entries)
        if problem is not None:
            log.error("the state of run %s is over the event bound: %s", state.run_id, problem)
            return None
        return entries

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
            appends = self._appends(*self._decide(event))
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

    def _decide(self, event: Event) -> tuple[list[Event], set[str]]:
        """Fold `event` (a decision span each, if tracing is on) with the work this host
        decides in process (`runtime.inline`)."""
        return decide(event, lambda e: folded(e, self._fold), self.inline)

    @staticmethod
    def _appends(emitted: list[Event], decided: set[str]) -> list[Append]:
        """`emitted` encoded (all or none: an encoding error raises before any is kept);
        the tasks and requests of those not `decided` in process also to their topics."""
        appends: list[Append] = []
        for event in emitted:
            data = encode(event)
            appends.append(Append(RUNS_TOPIC, event.key, data))
            if event.event_id in decided:
                continue
            if isinstance(event.payload, NodeScheduled):
                appends.append(Append(task_topic(event.payload.node_type), event.key, data))
            elif isinstance(event.payload, ExpressionRequested):
                appends.append(Append(EXPRESSIONS_TOPIC, event.key, data))
        return appends

    def _refold_record(self, record: Record) -> Refolded | None:
        """Fold a record read again at restore; what it emitted was appended before.
        A poison record was set aside then, and its run failed: it only ends the run."""
        self.refolded_records += 1
        try:
            event = decode(record.value)
            known = seen_before(self.states.get(event.key), event)
            emitted, _ = self._decide(event)  # as it was first decided: answers included
            return Refolded(event, emitted, fresh_cause(known, emitted))
        except Exception as error:
            log.warning("restore: skipped poison at %s: %s", _at(record), describe(error))
            self._drop(record.key)
            return None

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
            # tombstones the changelog.
            self.states.pop(event.key, None)
        else:
            self.states[event.key] = state
        if changes:
            self._dirty.add(event.key)
            # The ids the fold marked seen: the event's and those of what it emitted.
            record = self.stored.setdefault(event.key, RunRecord())
            record.note_seen([event.event_id, *(e.event_id for e in emitted)])
        return emitted


def _at(record: Record) -> str:
    return f"{record.topic}/{record.partition}@{record.offset}"
