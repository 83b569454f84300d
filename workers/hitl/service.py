"""The HITL service: asks people, waits for them, and ends the node with their answer.

Two loops over the log and the read models, each safe to stop at any point:

- requests: consumes `aob.tasks.hitl`; per task appends `NodeStarted` and
  `ApprovalRequested`. The node stays running: it holds the run's token until a
  decision ends it. Ids derive from the task's, so a redelivered task changes nothing,
  and one whose request the log already holds is not asked again.
- (deadlines are not watched here: `ApprovalRequested.deadline`, chosen on this
  service's clock, makes the coordinator set a timer, fired like every timer by the
  timer service; the coordinator then decides the approval as `ApprovalDecided` by
  "system:timeout" unless someone decided it first.)
- decisions: consumes `aob.runs`; for each `ApprovalDecided` that won its approval
  (the first in log order, as the read model records) appends the node's outcome,
  `NodeCompleted` (routing on approve/reject) or `NodeFailed` (a timeout meaning
  fail). Its id derives from the decision's, so a replay is dropped downstream; and a
  decision read again whose outcome the log already holds (its position's commit was
  read stale by a new owner) is not answered twice.

Offsets are committed with the appends (atomically on the embedded log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from aob.events.codec import decode, encode, event_type
from aob.events.ids import derived_event_id
from aob.events.log.consumer import Consumer
from aob.events.log.port import Append, EventLog, Record, TopicPartition
from aob.events.partitioner import partition_for
from aob.events.tracing import handling
from aob.events.types import (
    RUNS_TOPIC,
    ApprovalDecided,
    Event,
    NodeFailed,
    NodeScheduled,
    NodeStarted,
    Payload,
    task_topic,
)
from aob.projections.runtime.deadletter import UNDECODABLE, dead_letter, describe
from aob.projections.workflow.definition import HITL_TYPE
from aob.workers.hitl.decision import node_outcome
from aob.workers.hitl.request import RenderError, approval_request

log = logging.getLogger(__name__)
_DECIDED = ApprovalDecided.__name__.encode()  # the type as an envelope stores it (UTF-8)

REQUESTS_GROUP = "aob-worker-hitl"
DECISIONS_GROUP = "aob-hitl-decisions"
COMMIT_INTERVAL = 1.0  # seconds between commits of positions that led to no outcome
OUTCOME_CHECK_S = 10.0  # longest wait for the read models before writing an outcome


class ApprovalStore(Protocol):
    """What the service reads of the read models (`AsyncReadModels` is one)."""

    async def get_approval(self, approval_id: str) -> dict[str, Any] | None: ...

    async def offsets(self) -> dict[TopicPartition, int]: ...

    async def timeline(
        self, key: str, after_offset: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]: ...


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def approval_id_for(task_event_id: str) -> str:
    """The approval a task asks for: one per task, the same on redelivery."""
    return derived_event_id(task_event_id, "approval")


class HitlService:
    def __init__(
        self,
        event_log: EventLog,
        store: ApprovalStore,
        *,
        worker_id: str = "hitl",
        interval: float = 0.05,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.log = event_log
        self.store = store
        self.worker_id = worker_id
        self.interval = interval
        self.clock = clock
        self.requests = Consumer(event_log, REQUESTS_GROUP, [task_topic(HITL_TYPE)])
        self.decisions = Consumer(event_log, DECISIONS_GROUP, [RUNS_TOPIC])
        self._runs_partitions = 1  # read at start

    async def start(self) -> None:
        # Fixed once created (run states are kept per partition): read once, not per task.
        self._runs_partitions = await self.log.partitions(RUNS_TOPIC)
        await self.requests.start()
        await self.decisions.start()

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(self._serve_requests(stop), self._serve_decisions(stop))

    # --- requests ----------------------------------------------------------------------

    async def _serve_requests(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            records = await self.requests.poll(timeout=0.5)
            if records:
                appends: list[Append] = []
                for record in records:
                    try:
                        appends += await self._request(record)
                    except Exception as error:  # poison: set aside, the others go on
                        appends += _set_aside(record, REQUESTS_GROUP, error)
                await self.requests.commit_unless_fenced(appends)

    async def _request(self, record: Record) -> list[Append]:
        task_event = decode(record.value)
        task = task_event.payload
        if not isinstance(task, NodeScheduled):
            return []
        if await self._recorded(
            task.run_id, derived_event_id(task_event.event_id, "request"), None
        ):
            return []  # asked before: its position was committed late, or read stale
        at = self.clock()
        node = (task.run_id, task.node_id, task.iteration, task.attempt)
        started = NodeStarted(*node, self.worker_id)
        asked: Payload
        with handling(task_event, "aob.execute hitl") as scope:  # tracing on: a span
            try:
                asked = await approval_request(task, approval_id_for(task_event.event_id), at)
            except RenderError as error:
                asked = NodeFailed(
                    *node, f"cannot render the approval request: {error}", retryable=False
                )
            scope.outcome(asked)
        actor, span_id = f"worker:{self.worker_id}", scope.span_id
        return [
            _append(task_event, "started", started, at, actor, span_id),
            _append(task_event, "request", asked, at, actor, span_id),
        ]

    # --- decisions ---------------------------------------------------------------------

    async def _serve_decisions(self, stop: asyncio.Event) -> None:
        """Positions are committed with each outcome, else at most once a second:
        this reads every run event, and re-reading a few after a crash is harmless."""
        uncommitted, last_commit = False, time.monotonic()
        while not stop.is_set():
            records = await self.decisions.poll(timeout=0.5)
            appends: list[Append] = []
            for record in records:
                try:
                    outcome = await self._resolve(record, stop)
                except Exception as error:
                    await self.store.offsets()  # raises when the store is down: not poison
                    outcome = _set_aside(record, DECISIONS_GROUP, error)
                if outcome is None:
                    return  # stopped mid-batch: keep the last committed positions
                appends.extend(outcome)
            uncommitted = uncommitted or bool(records)
            if appends or (uncommitted and time.monotonic() - last_commit >= COMMIT_INTERVAL):
                await self.decisions.commit_unless_fenced(appends)
                uncommitted, last_commit = False, time.monotonic()
        if uncommitted:
            await self.decisions.commit_unless_fenced()

    async def _resolve(self, record: Record, stop: asyncio.Event) -> list[Append] | None:
        """The node outcome if this record is the decision that won; None if stopped."""
        # Most run events: skip their decoding. The type is an Avro string of the
        # envelope: bytes without the name cannot be one (a search in C, cheaper than
        # reading the envelope's varints for every record of every run).
        if _DECIDED not in record.value or event_type(record.value) != "ApprovalDecided":
            return []
        decided = decode(record.value)
        if not isinstance(decided.payload, ApprovalDecided):
            return []
        if not await self._projected(record, stop):
            return None
        approval = await self.store.get_approval(decided.payload.approval_id)
        if approval is None or approval["decision_event_id"] != decided.event_id:
            return []  # lost to an earlier decision, or the run ended first
        if approval["attempt"] is None:
            log.warning("approval %s names no node attempt; left alone", approval["approval_id"])
            return []
        recorded = await self._outcome_recorded(record, decided, stop)
        if recorded is None:
            return None
        if recorded:
            return []  # handled before: its position was committed late, or read stale
        with handling(decided, "aob.execute hitl decision") as scope:
            outcome = node_outcome(approval, decided)
            scope.outcome(outcome)
        actor = f"worker:{self.worker_id}"
        return [_append(decided, "outcome", outcome, self.clock(), actor, scope.span_id)]

    async def _outcome_recorded(
        self, record: Record, decided: Event, stop: asyncio.Event
    ) -> bool | None:
        """Whether the log holds the outcome of `decided` after it already (None: asked
        to stop first): see `_recorded`."""
        outcome_id = derived_event_id(decided.event_id, "outcome")
        return await self._recorded(decided.key, outcome_id, record.offset, stop)

    async def _recorded(
        self, run_id: str, event_id: str, after: int | None, stop: asyncio.Event | None = None
    ) -> bool | None:
        """Whether the log holds `event_id` among `run_id`'s events (after offset
        `after`), which this service derives from what it reads: a record read again
        after a crash or a rebalance was handled before if so (the offsets a new owner
        reads are stable on Kafka, `kafka_offsets`; this guards the log ports that make
        no such promise, and whatever else hands a record over twice). The read models
        are waited for up to the run's partition's end as of now (bounded: past
        `OUTCOME_CHECK_S` the event is written, and the fold drops a copy by its id);
        None if `stop` is set first."""
        partition = partition_for(run_id, self._runs_partitions)
        position = TopicPartition(RUNS_TOPIC, partition)
        end = (await self.log.end_offsets(RUNS_TOPIC)).get(partition, 0)
        deadline = time.monotonic() + OUTCOME_CHECK_S
        while (await self.store.offsets()).get(position, 0) < end:
            if stop is not None and stop.is_set():
                return None
            if time.monotonic() > deadline:
                log.warning("read models behind %s: %s not checked", position, event_id)
                return False
            await asyncio.sleep(0.01)
        later = await self.store.timeline(run_id, after_offset=after)
        return any(row["event_id"] == event_id for row in later)

    async def _projected(self, record: Record, stop: asyncio.Event) -> bool:
        """Wait until the read models include `record`; False if asked to stop first."""
        while (await self.store.offsets()).get(record.position, 0) <= record.offset:
            if stop.is_set():
                return False
            await asyncio.sleep(0.01)
        return True


def _set_aside(record: Record, service: str, error: Exception) -> list[Append]:
    """A record this service cannot handle, set aside with its run failed."""
    log.exception("set aside the record at %s/%s@%s", record.topic, record.partition, record.offset)
    what = event_type(record.value) or UNDECODABLE
    return dead_letter(record, service, describe(error), what=what)


def _append(
    cause: Event, kind: str, payload: Payload, at: int, actor: str, span_id: str | None = None
) -> Append:
    event = Event(
        event_id=derived_event_id(cause.event_id, kind),
        key=cause.key,
        occurred_at=at,
        payload=payload,
        trace_id=cause.trace_id,
        causation_id=cause.event_id,
        actor=actor,
        span_id=span_id,
    )
    return Append(RUNS_TOPIC, event.key, encode(event))
