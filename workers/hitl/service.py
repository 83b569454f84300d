"""The HITL service: asks people, waits for them, and ends the node with their answer.

Three loops over the log and the read models, each safe to stop at any point:

- requests: consumes `aob.tasks.hitl`; per task appends `NodeStarted` and
  `ApprovalRequested`. The node stays running: it holds the run's token until a
  decision ends it. Ids derive from the task's, so a redelivered task changes nothing.
- deadlines: pending approvals and their deadlines are a read model (a projection
  of the log), so a restarted service finds the ones that fell due while it was
  down and decides them at once, as `ApprovalDecided` by "system:timeout".
- decisions: consumes `aob.runs`; for each `ApprovalDecided` that won its approval
  (the first in log order, as the read model records) appends the node's outcome,
  `NodeCompleted` (routing on approve/reject) or `NodeFailed` (a timeout meaning
  fail). Its id derives from the decision's, so a replay is dropped downstream.

Offsets are committed with the appends (atomically on the embedded log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from aob.events.codec import decode, encode, event_type
from aob.events.ids import derived_event_id
from aob.events.log.consumer import Consumer
from aob.events.log.port import Append, EventLog, Record, TopicPartition
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
from aob.projections.workflow.definition import HITL_TYPE, ON_TIMEOUT_DEFAULT
from aob.workers.hitl.decision import TIMEOUT_DECIDER, node_outcome
from aob.workers.hitl.request import RenderError, approval_request

log = logging.getLogger(__name__)

REQUESTS_GROUP = "aob-worker-hitl"
DECISIONS_GROUP = "aob-hitl-decisions"
COMMIT_INTERVAL = 1.0  # seconds between commits of positions that led to no outcome


class ApprovalStore(Protocol):
    """What the service reads of the read models (`AsyncReadModels` is one)."""

    async def get_approval(self, approval_id: str) -> dict[str, Any] | None: ...

    async def list_approvals(
        self, run_id: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]: ...

    async def offsets(self) -> dict[TopicPartition, int]: ...


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
        # Timeouts appended but maybe not projected yet: not to be fired again meanwhile.
        self._in_flight: set[str] = set()
        # The read models' positions at the last scan of pending approvals, and the
        # earliest deadline still ahead then: no need to scan again before either moves.
        self._scanned: dict[TopicPartition, int] | None = None
        self._next_deadline: float = math.inf

    async def start(self) -> None:
        await self.requests.start()
        await self.decisions.start()

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(
            self._serve_requests(stop), self._serve_decisions(stop), self._watch_deadlines(stop)
        )

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
                await self.requests.commit(appends)

    async def _request(self, record: Record) -> list[Append]:
        task_event = decode(record.value)
        task = task_event.payload
        if not isinstance(task, NodeScheduled):
            return []
        at = self.clock()
        node = (task.run_id, task.node_id, task.iteration, task.attempt)
        started = NodeStarted(*node, self.worker_id)
        asked: Payload
        try:
            asked = await approval_request(task, approval_id_for(task_event.event_id), at)
        except RenderError as error:
            asked = NodeFailed(*node, f"cannot render the approval request: {error}",
                               retryable=False)
        return [
            _append(task_event, "started", started, at, f"worker:{self.worker_id}"),
            _append(task_event, "request", asked, at, f"worker:{self.worker_id}"),
        ]

    # --- deadlines ---------------------------------------------------------------------

    async def _watch_deadlines(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.fire_overdue()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def fire_overdue(self) -> int:
        """Decide every pending approval past its deadline as its on_timeout says;
        returns how many were decided. A human's decision appended first wins."""
        now = self.clock()
        positions = await self.store.offsets()
        if positions == self._scanned and now < self._next_deadline:
            return 0  # the pending approvals are as last read, and none fell due since
        pending = await self.store.list_approvals(status="pending")
        self._scanned, self._next_deadline = positions, math.inf
        self._in_flight &= {a["approval_id"] for a in pending}
        appends = []
        for approval in pending:
            deadline = approval["deadline"]
            if deadline is None or approval["approval_id"] in self._in_flight:
                continue
            if deadline > now:
                self._next_deadline = min(self._next_deadline, deadline)
                continue
            self._in_flight.add(approval["approval_id"])
            appends.append(_timeout(approval, now))
        if appends:
            await self.log.append(appends)
        return len(appends)

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
                await self.decisions.commit(appends)
                uncommitted, last_commit = False, time.monotonic()
        if uncommitted:
            await self.decisions.commit()

    async def _resolve(self, record: Record, stop: asyncio.Event) -> list[Append] | None:
        """The node outcome if this record is the decision that won; None if stopped."""
        if event_type(record.value) != "ApprovalDecided":
            return []  # most run events: skip their decoding
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
        outcome = node_outcome(approval, decided)
        return [_append(decided, "outcome", outcome, self.clock(), f"worker:{self.worker_id}")]

    async def _projected(self, record: Record, stop: asyncio.Event) -> bool:
        """Wait until the read models include `record`; False if asked to stop first."""
        while (await self.store.offsets()).get(record.position, 0) <= record.offset:
            if stop.is_set():
                return False
            await asyncio.sleep(0.01)
        return True


def _set_aside(record: Record, service: str, error: Exception) -> list[Append]:
    """A record this service cannot handle, set aside with its run failed."""
    log.exception("set aside the record at %s/%s@%s", record.topic, record.partition,
                  record.offset)
    what = event_type(record.value) or UNDECODABLE
    return dead_letter(record, service, describe(error), what=what)


def _timeout(approval: dict[str, Any], at: int) -> Append:
    """The deadline's decision; its id derives from the approval, so firing it twice
    (a crash before the first was projected) appends one decision, twice."""
    meaning = approval["on_timeout"] or ON_TIMEOUT_DEFAULT
    payload = ApprovalDecided(approval["run_id"], approval["approval_id"], meaning, TIMEOUT_DECIDER,
                              "no decision by the deadline")
    event = Event(derived_event_id(approval["approval_id"], "timeout"), approval["run_id"], at,
                  payload, actor=TIMEOUT_DECIDER)
    return Append(RUNS_TOPIC, event.key, encode(event))


def _append(cause: Event, kind: str, payload: Payload, at: int, actor: str) -> Append:
    event = Event(
        event_id=derived_event_id(cause.event_id, kind),
        key=cause.key,
        occurred_at=at,
        payload=payload,
        trace_id=cause.trace_id,
        causation_id=cause.event_id,
        actor=actor,
    )
    return Append(RUNS_TOPIC, event.key, encode(event))
