"""Runs node tasks from an `aob.tasks.<type>` topic and reports their outcome.

A worker is at-least-once: it commits its task offsets only after the outcome is
appended to `aob.runs`, in the same fenced step (`Consumer.commit`). Tasks finish out
of order, so the offset stops at the first task still executing; the commit names the
tasks finished past it (`done_ahead`), which the partition's next owner skips: a crash
or a rebalance re-executes only tasks whose outcome is not in the log. Outcome ids are
derived from the task's event id, so an outcome appended twice anyway (by the
one-task-at-a-time fallback below, whose appends precede its commit) is dropped by
the coordinator.

Workers of one node type share its task topic as one consumer group: each task is
executed by the worker owning its partition. When a partition is revoked, its tasks
in flight get `settle_timeout` seconds to finish; the rest are abandoned (the new
owner runs them again), what finished is committed, never past an unfinished task.
A worker fenced off a partition (it was paused past its session) drops its outcomes
for that partition: the new owner executes those tasks again.

Poison never stops it: a task it cannot decode, a handler that raises, an outcome
it cannot encode or the log refuses (too large) is set aside on `aob.deadletter` and
fails its node (or, undecodable, its run); the offsets move on. A log that cannot be
written at all stops the host (the service turns unhealthy and exits): it never
goes on executing tasks whose outcomes it cannot record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aob.events.codec import decode, encode
from aob.events.ids import derived_event_id
from aob.events.log.consumer import Consumer
from aob.events.log.done_ahead import DoneAhead, gaps
from aob.events.log.port import (
    Append,
    CommitUnknown,
    EventLog,
    Fenced,
    LogError,
    Record,
    TopicPartition,
)
from aob.events.tracing import handling
from aob.events.types import (
    RUNS_TOPIC,
    Event,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeStarted,
    Payload,
    task_topic,
)
from aob.projections.runtime.deadletter import dead_letter, describe
from aob.workers.outputs import OutputError, OutputStore

log = logging.getLogger(__name__)


class NodeError(Exception):
    """A node attempt failed. `retryable=False` fails it without further attempts;
    `not_retried` says why, in words a user reads beside the error."""

    def __init__(
        self, message: str, *, retryable: bool = True, not_retried: str | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.not_retried = not_retried if not retryable else None


Handler = Callable[[NodeScheduled], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class NodeType:
    """A node type's executor. `announce_start` appends `NodeStarted` before running
    (for slow work users watch); quick built-ins report start and end together."""

    name: str
    handler: Handler
    announce_start: bool = True
    concurrency: int = 16


# Task ids a worker remembers: a coordinator replay may re-emit a NodeScheduled
# (same derived id) that this worker has already executed or is executing.
_RECENT_TASKS = 10_000


@dataclass(frozen=True, slots=True)
class _Done:
    """One record's appends, ready to flush. `task_event` is its decoded task (None
    when it was not one): what fails the node if the log refuses the appends."""

    record: Record
    appends: list[Append]
    task_event: Event | None = None


@dataclass(frozen=True, slots=True)
class _Progress:
    """What a commit says of each partition: see `WorkerHost._progress`."""

    offsets: dict[TopicPartition, int]
    done: dict[TopicPartition, DoneAhead]

    def of(self, partitions: Iterable[TopicPartition]) -> _Progress:
        keep = set(partitions)
        return _Progress(
            {tp: o for tp, o in self.offsets.items() if tp in keep},
            {tp: d for tp, d in self.done.items() if tp in keep},
        )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class WorkerHost:
    """Executes tasks concurrently; a slow task never holds back the others' outcomes.

    Outcomes are appended in groups by one flusher, together with the committable
    offsets: per partition, the lowest offset still executing (or everything read).
    So a crash re-delivers only tasks whose outcome is not durable yet.
    """

    def __init__(
        self,
        event_log: EventLog,
        node_type: NodeType,
        *,
        worker_id: str = "worker",
        outputs: OutputStore | None = None,
        settle_timeout: float = 5.0,
        session_timeout: float = 10.0,
    ) -> None:
        self.log = event_log
        self.node_type = node_type
        # Large outputs go to (and referenced ones come from) the blob store; without
        # one, outputs travel inline (tests, and workers that need no blobs).
        self.outputs = outputs
        self.worker_id = worker_id
        self.settle_timeout = settle_timeout
        group = f"aob-worker-{node_type.name}"
        self.consumer = Consumer(
            event_log,
            group,
            [task_topic(node_type.name)],
            listener=self,
            session_timeout=session_timeout,
        )
        self._slots = asyncio.Semaphore(node_type.concurrency)
        self._in_flight: dict[TopicPartition, set[int]] = {}
        self._ready: list[_Done] = []
        self._wake_flusher = asyncio.Event()
        # One flush at a time: a commit saying tasks are done (its offset past them, or
        # naming them) must not land while their outcomes, in another, may still fail.
        self._flushing = asyncio.Lock()
        self._tasks: dict[asyncio.Task[None], Record] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()  # LRU of executed task ids
        self._broken: BaseException | None = None  # the log failed under a task: stop

    @property
    def group(self) -> str:
        return f"aob-worker-{self.node_type.name}"

    async def start(self) -> None:
        await self.consumer.start()

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        log.info("worker %s took %s", self.worker_id, _names(partitions))

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        """Settle the lost partitions' tasks (finish or abandon), commit what is done."""
        running = [task for task, record in self._tasks.items() if record.position in partitions]
        if running:
            _, unfinished = await asyncio.wait(running, timeout=self.settle_timeout)
            for task in unfinished:
                task.cancel()  # abandoned: uncommitted, so the new owner runs it again
            await asyncio.gather(*unfinished, return_exceptions=True)
        # After a flush under way: its outcomes are what this commit says is done.
        async with self._flushing:
            ready = [done for done in self._ready if done.record.position in partitions]
            self._ready = [done for done in self._ready if done.record.position not in partitions]
            progress = self._progress().of(partitions)
            try:
                await self._flush(ready, progress)
            except Fenced as error:  # lost already: the new owner re-executes them
                log.warning("worker %s fenced: %s", self.worker_id, error)
        for tp in partitions:
            self._in_flight.pop(tp, None)
        log.info("worker %s gave up %s", self.worker_id, _names(partitions))

    async def run(self, stop: asyncio.Event) -> None:
        """Execute tasks until `stop`; raises (after flushing what it can) when the log
        cannot be written, so that the service turns unhealthy instead of wedging."""
        closing = asyncio.Event()
        flusher = asyncio.create_task(self._flush_until(closing))
        try:
            while not stop.is_set() and not flusher.done():
                records = await self.consumer.poll(timeout=0.5)
                for record in records:  # all before any waits: none may be committed early
                    self._in_flight.setdefault(record.position, set()).add(record.offset)
                for record in records:
                    await self._slots.acquire()
                    if flusher.done():
                        self._slots.release()
                        break  # no outcome could be recorded: execute nothing more
                    if record.position not in self.consumer.assignment:
                        self._slots.release()  # revoked while waiting for a slot
                        continue
                    task = asyncio.create_task(self._process(record))
                    self._tasks[task] = record
                    task.add_done_callback(self._forget)
        finally:
            for task in list(self._tasks):
                task.cancel()  # not committed: redelivered to the next worker
            await asyncio.gather(*self._tasks, return_exceptions=True)
            closing.set()
            self._wake_flusher.set()
            try:
                await flusher  # flushes what is ready; raises why it stopped, if it did
            finally:
                await self.consumer.close()  # leaves the group: its partitions move on

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _process(self, record: Record) -> None:
        try:
            done = await self._execute(record)
        except LogError as error:  # announcing the start: the log is down
            self._broken = error
            self._wake_flusher.set()
            return
        except Exception as error:  # a bug of this host: the task is set aside all the same
            log.exception("task at %s could not be handled", _at(record))
            done = _Done(record, dead_letter(record, self.group, describe(error)))
        finally:
            self._slots.release()
        self._ready.append(done)
        self._in_flight[record.position].discard(record.offset)
        self._wake_flusher.set()

    async def _flush_until(self, closing: asyncio.Event) -> None:
        while not (closing.is_set() and not self._ready):
            await self._wake_flusher.wait()
            self._wake_flusher.clear()
            if self._broken is not None:
                raise self._broken
            async with self._flushing:
                batch, self._ready = self._ready, []
                await self._flush(batch, self._progress())

    async def _flush(self, batch: list[_Done], progress: _Progress) -> None:
        """Append `batch` and commit; if the log refuses the batch, append it task by
        task, failing the nodes whose outcome it refuses (e.g. too large). Raises when
        the log refuses even that: it is down, and the host must stop."""
        appends: dict[TopicPartition, list[Append]] = {}
        for done in batch:
            appends.setdefault(done.record.position, []).extend(done.appends)
        try:
            await self._commit(appends, progress)
            return
        except Fenced as error:
            # Some partitions were lost: their outcomes go with them (the new owner
            # re-executes those tasks); the partitions still owned are committed.
            owned = self.consumer.assignment
            log.warning("worker %s fenced (%s): keeps %s", self.worker_id, error, _names(owned))
            batch = [done for done in batch if done.record.position in owned]
            progress = progress.of(owned)
            appends = {tp: a for tp, a in appends.items() if tp in owned}
            if progress.offsets:
                with contextlib.suppress(Fenced):  # lost meanwhile as well
                    await self._commit(appends, progress)
            return
        except CommitUnknown:
            raise  # its outcomes may be in the log: appending them again could repeat them
        except Exception as error:
            if not any(appends.values()):
                raise  # only the commit failed: nothing to blame but the log
            log.warning("appending %d outcomes failed (%s): one task at a time", len(batch), error)
        for done in batch:
            await self._append_or_fail(done)
        await self._commit({}, progress)

    async def _commit(
        self, appends: dict[TopicPartition, list[Append]], progress: _Progress
    ) -> None:
        await self.consumer.commit(appends, offsets=progress.offsets, done=progress.done)

    async def _append_or_fail(self, done: _Done) -> None:
        try:
            await self.log.append(done.appends)
        except Exception as error:
            if done.task_event is None:
                raise  # a dead letter the log refuses: the log is what fails
            reason = f"the log refused its outcome ({describe(error)})"
            log.error("node outcome of task at %s not recorded: %s", _at(done.record), reason)
            await self.log.append(self._unrecordable(done.record, done.task_event, reason))

    def _progress(self) -> _Progress:
        """Per partition, the offset to commit (the lowest task still executing, or
        everything read) and the tasks finished past it: none is executed again by the
        partition's next owner."""
        positions = self.consumer.positions
        offsets, done = dict(positions), {}
        for tp, unfinished in self._in_flight.items():
            if unfinished and tp in positions:
                offsets[tp] = min(unfinished)
                done[tp] = gaps(unfinished, positions[tp])
        return _Progress(offsets, done)

    async def _execute(self, record: Record) -> _Done:
        try:
            task_event = decode(record.value)
        except Exception as error:
            log.error("set aside an undecodable task at %s: %s", _at(record), error)
            return _Done(record, dead_letter(record, self.group, describe(error)))
        task = task_event.payload
        if not isinstance(task, NodeScheduled) or self._seen_before(task_event.event_id):
            return _Done(record, [])
        try:
            return await self._run_task(record, task_event, task)
        except asyncio.CancelledError:
            # Abandoned (its partition went in a rebalance, or the host stops): not
            # executed as far as this host knows, so a redelivery here runs it again.
            self._recent.pop(task_event.event_id, None)
            raise

    async def _run_task(self, record: Record, task_event: Event, task: NodeScheduled) -> _Done:
        started = NodeStarted(
            task.run_id, task.node_id, task.iteration, task.attempt, self.worker_id
        )
        appends = [self._append(task_event, "started", started)]
        if self.node_type.announce_start:
            await self.log.append(appends)
            appends = []
        # The run's trace in log lines; and, tracing on, the execution's span.
        with handling(task_event, f"aob.execute {self.node_type.name}") as scope:
            outcome = await self._outcome(task)
            scope.outcome(outcome)
        if isinstance(outcome, str):
            return self._set_aside(record, task_event, appends, outcome)
        try:
            appends.append(self._append(task_event, "outcome", outcome, scope.span_id))
        except Exception as error:  # e.g. an output too deep or too large to encode
            reason = f"output cannot be recorded ({describe(error)})"
            return self._set_aside(record, task_event, appends, reason)
        return _Done(record, appends, task_event)

    def _set_aside(
        self, record: Record, task_event: Event, appends: list[Append], reason: str
    ) -> _Done:
        return _Done(record, appends + self._unrecordable(record, task_event, reason), task_event)

    def _seen_before(self, task_id: str) -> bool:
        """Remember `task_id`; True if it was already remembered."""
        seen = task_id in self._recent
        self._recent[task_id] = None
        self._recent.move_to_end(task_id)
        if len(self._recent) > _RECENT_TASKS:
            self._recent.popitem(last=False)
        return seen

    async def _outcome(self, task: NodeScheduled) -> Payload | str:
        """The node's outcome; or, when the handler crashed, why (the task is then set
        aside and its node fails without retries: a bug does the same every time)."""
        node = (task.run_id, task.node_id, task.iteration, task.attempt)
        try:
            if self.outputs is not None and task.output_refs:
                resolved = await self.outputs.resolve(task.input, task.output_refs)
                task = dataclasses.replace(task, input=resolved)
            output = await self.node_type.handler(task)
            if self.outputs is None:
                return NodeCompleted(*node, output)
            value, ref = await self.outputs.store(output)
        except NodeError as error:
            return NodeFailed(*node, str(error), error.retryable, error.not_retried)
        except OutputError as error:
            why = "the output cannot be stored; it would not be the next time"
            return NodeFailed(*node, str(error), retryable=False, not_retried=why)
        except Exception as error:  # a handler bug must fail the node, not the worker
            log.exception("node %s of run %s crashed", task.node_id, task.run_id)
            return f"the {self.node_type.name} handler raised {describe(error)}"
        return NodeCompleted(*node, value, ref)

    def _unrecordable(self, record: Record, task_event: Event, reason: str) -> list[Append]:
        """The task set aside, and its node failed (no retries) saying why; its run goes
        on as the workflow says. Under the outcome's id: one outcome per task, always."""
        task = task_event.payload
        assert isinstance(task, NodeScheduled)
        node = (task.run_id, task.node_id, task.iteration, task.attempt)
        error = f"{reason}; task set aside as dead letter"
        return [
            *dead_letter(record, self.group, reason, what=task_event.type, fail_run=False),
            self._append(task_event, "started", NodeStarted(*node, self.worker_id)),
            self._append(
                task_event,
                "outcome",
                NodeFailed(*node, error, retryable=False, not_retried="the task was set aside"),
            ),
        ]

    def _append(
        self, task_event: Event, kind: str, payload: Payload, span_id: str | None = None
    ) -> Append:
        event = Event(
            event_id=derived_event_id(task_event.event_id, kind),
            key=task_event.key,
            occurred_at=_now_ms(),
            payload=payload,
            trace_id=task_event.trace_id,
            causation_id=task_event.event_id,
            actor=f"worker:{self.worker_id}",
            span_id=span_id,
        )
        return Append(RUNS_TOPIC, event.key, encode(event))


def _names(partitions: frozenset[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)) or "nothing"


def _at(record: Record) -> str:
    return f"{record.topic}/{record.partition}@{record.offset}"
