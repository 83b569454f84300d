"""Runs node tasks from an `aob.tasks.<type>` topic and reports their outcome.

A worker is at-least-once: it commits its task offsets only after the outcome is
appended to `aob.runs` (in the same step on the embedded log). Outcome ids are
derived from the task's event id, so a re-executed task's duplicate outcome is
dropped by the coordinator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aob.events.codec import decode, encode
from aob.events.ids import derived_event_id
from aob.events.log.consumer import Consumer
from aob.events.log.port import Append, EventLog, Record, TopicPartition
from aob.events.tracing import traced
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

log = logging.getLogger(__name__)


class NodeError(Exception):
    """A node attempt failed. `retryable=False` fails it without further attempts."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class WorkerHost:
    """Executes tasks concurrently; a slow task never holds back the others' outcomes.

    Outcomes are appended in groups by one flusher, together with the committable
    offsets: per partition, the lowest offset still executing (or everything read).
    So a crash re-delivers only tasks whose outcome is not durable yet.
    """

    def __init__(
        self, event_log: EventLog, node_type: NodeType, *, worker_id: str = "worker"
    ) -> None:
        self.log = event_log
        self.node_type = node_type
        self.worker_id = worker_id
        group = f"aob-worker-{node_type.name}"
        self.consumer = Consumer(event_log, group, [task_topic(node_type.name)])
        self._slots = asyncio.Semaphore(node_type.concurrency)
        self._in_flight: dict[TopicPartition, set[int]] = {}
        self._ready: list[Append] = []
        self._wake_flusher = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent: OrderedDict[str, None] = OrderedDict()  # LRU of executed task ids

    async def start(self) -> None:
        await self.consumer.start()

    async def run(self, stop: asyncio.Event) -> None:
        flusher = asyncio.create_task(self._flush_until(stop))
        try:
            while not stop.is_set():
                records = await self.consumer.poll(timeout=0.5)
                for record in records:  # all before any waits: none may be committed early
                    self._in_flight.setdefault(record.position, set()).add(record.offset)
                for record in records:
                    await self._slots.acquire()
                    task = asyncio.create_task(self._process(record))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            for task in list(self._tasks):
                task.cancel()  # not committed: redelivered to the next worker
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._wake_flusher.set()
            await flusher

    async def _process(self, record: Record) -> None:
        try:
            appends = await self._execute(record)
        finally:
            self._slots.release()
        self._ready.extend(appends)
        self._in_flight[record.position].discard(record.offset)
        self._wake_flusher.set()

    async def _flush_until(self, stop: asyncio.Event) -> None:
        while not (stop.is_set() and not self._ready):
            await self._wake_flusher.wait()
            self._wake_flusher.clear()
            appends, self._ready = self._ready, []
            await self.log.append_and_commit(appends, self.consumer.group, self._committable())

    def _committable(self) -> dict[TopicPartition, int]:
        positions = self.consumer.positions
        for tp, offsets in self._in_flight.items():
            if offsets:
                positions[tp] = min(offsets)
        return positions

    async def _execute(self, record: Record) -> list[Append]:
        task_event = decode(record.value)
        task = task_event.payload
        if not isinstance(task, NodeScheduled) or self._seen_before(task_event.event_id):
            return []
        started = NodeStarted(
            task.run_id, task.node_id, task.iteration, task.attempt, self.worker_id
        )
        appends = [self._append(task_event, "started", started)]
        if self.node_type.announce_start:
            await self.log.append(appends)
            appends = []
        with traced(task_event.trace_id, task.run_id):  # the run's trace in log lines
            outcome = await self._outcome(task)
        appends.append(self._append(task_event, "outcome", outcome))
        return appends

    def _seen_before(self, task_id: str) -> bool:
        """Remember `task_id`; True if it was already remembered."""
        seen = task_id in self._recent
        self._recent[task_id] = None
        self._recent.move_to_end(task_id)
        if len(self._recent) > _RECENT_TASKS:
            self._recent.popitem(last=False)
        return seen

    async def _outcome(self, task: NodeScheduled) -> Payload:
        try:
            output = await self.node_type.handler(task)
        except NodeError as error:
            return NodeFailed(
                task.run_id, task.node_id, task.iteration, task.attempt, str(error), error.retryable
            )
        except Exception as error:  # a handler bug must fail the node, not the worker
            log.exception("node %s of run %s crashed", task.node_id, task.run_id)
            return NodeFailed(
                task.run_id,
                task.node_id,
                task.iteration,
                task.attempt,
                f"{type(error).__name__}: {error}",
            )
        return NodeCompleted(task.run_id, task.node_id, task.iteration, task.attempt, output)

    def _append(self, task_event: Event, kind: str, payload: Payload) -> Append:
        event = Event(
            event_id=derived_event_id(task_event.event_id, kind),
            key=task_event.key,
            occurred_at=_now_ms(),
            payload=payload,
            trace_id=task_event.trace_id,
            causation_id=task_event.event_id,
            actor=f"worker:{self.worker_id}",
        )
        return Append(RUNS_TOPIC, event.key, encode(event))
