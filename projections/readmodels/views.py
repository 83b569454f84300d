"""The projection without I/O: what each event does to the read models.

`project(event, position)` is a generator of portable SQL steps (named `:params`,
ON CONFLICT upserts, no engine-specific functions). A driver runs every step in
the batch's transaction and sends each `Fetch`'s first row back into the plan.
The SQLite store drives plans synchronously (`run_plan`), the Postgres store drives
the very same plans with `await`s (`run_plan_async`), so the per-event logic lives
only here.

Drivers must hand JSON columns back as JSON text, and translate `:name`
placeholders if their engine needs to (asyncpg wants `$n`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Container, Generator, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeAlias

import jsonpatch
import jsonpointer
import orjson

from aob.events.log.port import TopicPartition
from aob.events.types import (
    AgentUsageRecorded,
    ApprovalDecided,
    ApprovalEscalated,
    ApprovalRequested,
    ApprovalVoted,
    Event,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    PatchApplied,
    PatchProposed,
    PatchRejected,
    PatchReviewed,
    PatchReviewRequested,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunSubmitted,
    TagMoved,
    TimerFired,
    TimerSet,
    WorkflowCreated,
)
from aob.projections.workflow.definition import ON_TIMEOUT_DEFAULT

log = logging.getLogger(__name__)

Params: TypeAlias = Mapping[str, Any]
Row: TypeAlias = Mapping[str, Any]

# The tenant of runs submitted without one (before tenants existed, or auth off).
DEFAULT_TENANT = "default"
TERMINAL_RUN_STATUSES = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Exec:
    """A statement whose result the plan does not need."""

    sql: str
    params: Params


@dataclass(frozen=True, slots=True)
class Fetch:
    """A statement whose first row (or None) the driver sends back into the plan."""

    sql: str
    params: Params


Step: TypeAlias = Exec | Fetch
Plan: TypeAlias = Generator[Step, Row | None, None]


class Positioned(Protocol):
    """Where an event sits in the log; `aob.events.log.port.Record` is one."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Position:
    """A bare log position, for callers that hold decoded events but no `Record`."""

    topic: str
    partition: int
    offset: int


# An output the blob store holds is stored as {BLOB_REF: reference}: the API fetches
# the value when it shows the run (aob.platform.commands). Outputs are tenants' data:
# one shaped like a marker (a jq program can build {"$aob.blob": "sha256:..."} naming
# another tenant's blob) is stored wrapped as {ESCAPED: output}, and so is one shaped
# like that wrapper, so that only markers this projection wrote are ever fetched.
BLOB_REF = "$aob.blob"
ESCAPED = "$aob.escaped"
_MARKER_KEYS = frozenset({BLOB_REF, ESCAPED})


def stored_output(output: Any, ref: str | None) -> Any:
    """What a read model keeps of an output: the value, or a marker naming its blob."""
    if ref is not None:
        return {BLOB_REF: ref}
    if isinstance(output, dict) and len(output) == 1 and next(iter(output)) in _MARKER_KEYS:
        return {ESCAPED: output}
    return output


# The standard library's compact JSON, built once, for what orjson refuses.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS  # keys as json.dumps writes them ("1", "null")


def dumps(value: Any) -> str:
    """JSON text as stored: compact, key order kept (so rebuilds are byte-identical).

    orjson writes what `json.dumps(value, separators=(",", ":"), ensure_ascii=False)`
    does, floats aside (0.00001 where json.dumps writes 1e-05: the same value), at a
    tenth of the cost, which was a tenth of the projector's. Integers past 64 bits and
    lone surrogates, which it refuses, take the standard library's way. Stores are
    compared by the JSON's values (`queries.dump_row`), not its text."""
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS).decode()
    except TypeError:
        return _ENCODER.encode(value)


def loads(text: str | None) -> Any:
    """Inverse of `dumps`; SQL NULL reads as None."""
    return None if text is None else json.loads(text)


# --- batches and offsets ------------------------------------------------------------

LOAD_OFFSETS = 'SELECT topic, "partition", next_offset FROM projector_offsets'

SAVE_OFFSET = """
INSERT INTO projector_offsets (topic, "partition", next_offset)
VALUES (:topic, :partition, :next_offset)
ON CONFLICT (topic, "partition") DO UPDATE SET next_offset = excluded.next_offset
"""


def select_new(
    batch: Iterable[tuple[Positioned, Event]], stored: Mapping[TopicPartition, int]
) -> tuple[list[tuple[Positioned, Event]], dict[TopicPartition, int]]:
    """The events not yet applied, and the next offsets once they are.

    An event below its partition's next offset was applied before (or repeats
    within the batch): skipping it is what makes re-applying a batch a no-op.
    """
    # Keyed by plain tuples meanwhile: a TopicPartition per event cost more than the rest.
    next_offsets = {(tp.topic, tp.partition): offset for tp, offset in stored.items()}
    todo: list[tuple[Positioned, Event]] = []
    advanced: dict[tuple[str, int], int] = {}
    for position, event in batch:
        tp = (position.topic, position.partition)
        if position.offset < next_offsets.get(tp, 0):
            continue
        todo.append((position, event))
        next_offsets[tp] = advanced[tp] = position.offset + 1
    return todo, {
        TopicPartition(topic, partition): end for (topic, partition), end in advanced.items()
    }


def offset_params(tp: TopicPartition, next_offset: int) -> Params:
    return {"topic": tp.topic, "partition": tp.partition, "next_offset": next_offset}


def run_plan(plan: Plan, execute: Callable[[Step], Row | None]) -> None:
    """Drive `plan` synchronously: `execute` runs a step and returns its first row."""
    try:
        step = next(plan)
        while True:
            step = plan.send(execute(step))
    except StopIteration:
        return


async def run_plan_async(plan: Plan, execute: Callable[[Step], Awaitable[Row | None]]) -> None:
    """Drive `plan` with an async driver (asyncpg): the same plans, awaited."""
    try:
        step = next(plan)
        while True:
            step = plan.send(await execute(step))
    except StopIteration:
        return


# --- the projection ------------------------------------------------------------------

INSERT_TIMELINE = """
INSERT INTO timeline (topic, "partition", "offset", event_id, key, type, occurred_at,
                      actor, trace_id, causation_id, data)
VALUES (:topic, :partition, :offset, :event_id, :key, :type, :occurred_at,
        :actor, :trace_id, :causation_id, :data)
ON CONFLICT DO NOTHING
RETURNING event_id
"""

TOUCH_RUN = """
UPDATE runs SET updated_at = CASE WHEN updated_at > :at THEN updated_at ELSE :at END
WHERE run_id = :run_id
"""


def project(event: Event, position: Positioned) -> Plan:
    """The steps that apply one event.

    The timeline insert comes first and doubles as deduplication: an `event_id`
    seen before (a producer retry, or the same work item read from a task topic)
    changes nothing else.
    """
    inserted = yield Fetch(INSERT_TIMELINE, _timeline_params(event, position))
    if inserted is None:
        return
    handler = _HANDLERS.get(type(event.payload))
    if handler is not None:
        yield from handler(event.payload, event)
    run_id = getattr(event.payload, "run_id", None)
    if isinstance(run_id, str):  # workflow, tag and tool events (and requests) have no run
        yield Exec(TOUCH_RUN, {"run_id": run_id, "at": event.occurred_at})


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _field_names(payload_type: type[Any]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(payload_type)
    if names is None:
        names = _FIELD_NAMES[payload_type] = tuple(f.name for f in fields(payload_type))
    return names


def _fields_of(payload: Any) -> dict[str, Any]:
    """The payload as a dict. Payload fields hold JSON values, never dataclasses, so a
    shallow dict serialises the same as `asdict`, without its deep copy of every value."""
    return {name: getattr(payload, name) for name in _field_names(type(payload))}


def _timeline_params(event: Event, position: Positioned) -> Params:
    return {
        "topic": position.topic,
        "partition": position.partition,
        "offset": position.offset,
        "event_id": event.event_id,
        "key": event.key,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "actor": event.actor,
        "trace_id": event.trace_id,
        "causation_id": event.causation_id,
        "data": dumps(_fields_of(event.payload)),
    }


# --- workflows and tags ----------------------------------------------------------------

INSERT_WORKFLOW = """
INSERT INTO workflows (workflow_id, version, name, definition, created_at, created_by, tenant)
VALUES (:workflow_id, :version, :name, :definition, :at, :actor, :tenant)
ON CONFLICT (workflow_id, version) DO NOTHING
"""

UPSERT_TAG = """
INSERT INTO tags (tag, workflow_id, version, moved_at, moved_by, tenant)
VALUES (:tag, :workflow_id, :version, :at, :actor, :tenant)
ON CONFLICT (tag) DO UPDATE SET workflow_id = excluded.workflow_id,
    version = excluded.version, moved_at = excluded.moved_at, moved_by = excluded.moved_by,
    tenant = excluded.tenant
"""


def _workflow_created(p: WorkflowCreated, e: Event) -> Plan:
    """Versions are immutable: a second WorkflowCreated for one version is ignored."""
    name = p.definition.get("name") if isinstance(p.definition, dict) else None
    yield Exec(
        INSERT_WORKFLOW,
        {
            "workflow_id": p.workflow_id,
            "version": p.version,
            "name": name if isinstance(name, str) else None,
            "definition": dumps(p.definition),
            "at": e.occurred_at,
            "actor": e.actor,
            "tenant": p.tenant or DEFAULT_TENANT,
        },
    )


def _tag_moved(p: TagMoved, e: Event) -> Plan:
    params = {"tag": p.tag, "workflow_id": p.workflow_id, "version": p.version}
    tenant = p.tenant or DEFAULT_TENANT
    yield Exec(UPSERT_TAG, {**params, "at": e.occurred_at, "actor": e.actor, "tenant": tenant})


# --- runs ----------------------------------------------------------------------------------

INSERT_RUN = """
INSERT INTO runs (run_id, workflow_id, version, tag, status, inputs, revision,
                  submitted_at, submitted_by, updated_at, trace_id, definition, tenant)
VALUES (:run_id, :workflow_id, :version, :tag, 'running', :inputs, 0,
        :at, :actor, :at, :trace_id, :definition, :tenant)
ON CONFLICT (run_id) DO NOTHING
"""

END_RUN = """
UPDATE runs SET status = :status, output = :output, error = :error,
    error_node_id = :error_node_id, finished_at = :at
WHERE run_id = :run_id AND status IN ('running', 'waiting')
"""

DELETE_UNFIRED_TIMERS = "DELETE FROM timers WHERE run_id = :run_id AND NOT fired"

CANCEL_PENDING_APPROVALS = """
UPDATE approvals SET status = 'cancelled', decided_at = :at
WHERE run_id = :run_id AND status = 'pending'
"""

# "waiting" is derived here, once per change, so list_runs can filter on it cheaply.
REFRESH_WAITING = """
UPDATE runs SET status = CASE
    WHEN EXISTS (SELECT 1 FROM approvals a WHERE a.run_id = :run_id AND a.status = 'pending')
      OR EXISTS (SELECT 1 FROM patches p WHERE p.run_id = :run_id AND p.status = 'proposed')
    THEN 'waiting' ELSE 'running' END
WHERE run_id = :run_id AND status IN ('running', 'waiting')
"""

SELECT_RUN_STATUS = "SELECT status FROM runs WHERE run_id = :run_id"

# A node a replayed run starts out with: completed, with the output it had in the run
# replayed, never scheduled in this one.
INSERT_CARRIED_NODE = """
INSERT INTO node_runs (run_id, node_id, iteration, type, status, attempt, output,
                       finished_at, carried_from)
VALUES (:run_id, :node_id, 0, :type, 'completed', 0, :output, :at, :carried_from)
ON CONFLICT (run_id, node_id, iteration) DO NOTHING
"""

# Nodes still unfinished when their run ends will never finish: their results, should
# any still come, change nothing (as in the coordinator).
CANCEL_UNFINISHED_NODES = """
UPDATE node_runs SET status = 'cancelled', finished_at = :at
WHERE run_id = :run_id AND status IN ('scheduled', 'running', 'waiting', 'retrying')
"""


def _run_submitted(p: RunSubmitted, e: Event) -> Plan:
    yield Exec(
        INSERT_RUN,
        {
            "run_id": p.run_id,
            "workflow_id": p.workflow_id,
            "version": p.version,
            "tag": p.tag,
            "inputs": dumps(p.inputs),
            "at": e.occurred_at,
            "actor": e.actor,
            "trace_id": e.trace_id,
            "definition": dumps(p.definition),
            "tenant": p.tenant or DEFAULT_TENANT,
        },
    )
    for node in _carried_nodes(p):
        yield Exec(INSERT_CARRIED_NODE, {**node, "run_id": p.run_id, "at": e.occurred_at})
    yield from _run_budget(p)


def _carried_nodes(p: RunSubmitted) -> list[dict[str, Any]]:
    """The nodes of the definition a replay's checkpoint gives outputs (the coordinator
    starts the same ones out completed)."""
    checkpoint = p.checkpoint if isinstance(p.checkpoint, dict) else {}
    outputs = checkpoint.get("outputs")
    nodes = p.definition.get("nodes") if isinstance(p.definition, dict) else None
    if not isinstance(outputs, dict) or not isinstance(nodes, list):
        return []
    types = {n.get("id"): n.get("type") for n in nodes if isinstance(n, dict)}
    return [
        {
            "node_id": node_id,
            "type": types[node_id],
            "output": dumps(output),
            "carried_from": checkpoint.get("run_id"),
        }
        for node_id, output in outputs.items()
        if node_id in types
    ]


def _end_run(
    run_id: str,
    at: int,
    status: str,
    *,
    output: str | None = None,
    error: str | None = None,
    error_node_id: str | None = None,
) -> Plan:
    """Finish a run; its unfired timers can no longer matter, nor its pending approvals."""
    ended = {"run_id": run_id, "at": at}
    outcome = {"status": status, "output": output, "error": error, "error_node_id": error_node_id}
    yield Exec(END_RUN, {**ended, **outcome})
    yield Exec(CANCEL_UNFINISHED_NODES, ended)
    yield Exec(DELETE_UNFIRED_TIMERS, {"run_id": run_id})
    yield Exec(CANCEL_PENDING_APPROVALS, ended)


def _run_completed(p: RunCompleted, e: Event) -> Plan:
    output = dumps(stored_output(p.output, p.output_ref))
    yield from _end_run(p.run_id, e.occurred_at, "completed", output=output)


def _run_failed(p: RunFailed, e: Event) -> Plan:
    yield from _end_run(p.run_id, e.occurred_at, "failed", error=p.error, error_node_id=p.node_id)


def _run_cancelled(p: RunCancelled, e: Event) -> Plan:
    """The cancellation reason goes to `error`: the column says why a run ended early."""
    yield from _end_run(p.run_id, e.occurred_at, "cancelled", error=p.reason or None)


# --- node runs -----------------------------------------------------------------------------

# A new attempt resets the row; an older or repeated attempt cannot move it back.
SCHEDULE_NODE = """
INSERT INTO node_runs (run_id, node_id, iteration, type, status, attempt, scheduled_at)
VALUES (:run_id, :node_id, :iteration, :type, 'scheduled', :attempt, :at)
ON CONFLICT (run_id, node_id, iteration) DO UPDATE SET type = excluded.type,
    status = 'scheduled', attempt = excluded.attempt, worker = NULL, output = NULL,
    error = NULL, skip_reason = NULL, warning = FALSE,
    scheduled_at = excluded.scheduled_at, started_at = NULL, finished_at = NULL
WHERE node_runs.attempt < excluded.attempt
"""

# Outcomes count only for the current attempt, and the first outcome wins.
START_NODE = """
UPDATE node_runs SET status = 'running', worker = :worker, started_at = :at
WHERE run_id = :run_id AND node_id = :node_id AND iteration = :iteration
  AND attempt = :attempt AND status = 'scheduled'
"""

COMPLETE_NODE = """
UPDATE node_runs SET status = 'completed', output = :output, finished_at = :at
WHERE run_id = :run_id AND node_id = :node_id AND iteration = :iteration
  AND attempt = :attempt AND status IN ('scheduled', 'running', 'waiting')
"""

FAIL_NODE = """
UPDATE node_runs SET status = 'failed', error = :error, finished_at = :at
WHERE run_id = :run_id AND node_id = :node_id AND iteration = :iteration
  AND attempt = :attempt AND status IN ('scheduled', 'running', 'waiting')
"""

SKIP_NODE = """
INSERT INTO node_runs (run_id, node_id, iteration, status, skip_reason, warning, finished_at)
VALUES (:run_id, :node_id, :iteration, 'skipped', :reason, :warning, :at)
ON CONFLICT (run_id, node_id, iteration) DO UPDATE SET status = 'skipped',
    skip_reason = excluded.skip_reason, warning = excluded.warning,
    finished_at = excluded.finished_at
"""

MARK_RETRYING = """
UPDATE node_runs SET status = 'retrying'
WHERE run_id = :run_id AND node_id = :node_id AND iteration = :iteration
  AND attempt = :attempt AND status = 'failed'
"""


def _node_key(p: NodeScheduled | NodeStarted | NodeCompleted | NodeFailed) -> dict[str, Any]:
    return {
        "run_id": p.run_id,
        "node_id": p.node_id,
        "iteration": p.iteration,
        "attempt": p.attempt,
    }


def _node_scheduled(p: NodeScheduled, e: Event) -> Plan:
    yield Exec(SCHEDULE_NODE, {**_node_key(p), "type": p.node_type, "at": e.occurred_at})


def _node_started(p: NodeStarted, e: Event) -> Plan:
    yield Exec(START_NODE, {**_node_key(p), "worker": p.worker, "at": e.occurred_at})


def _node_completed(p: NodeCompleted, e: Event) -> Plan:
    output = dumps(stored_output(p.output, p.output_ref))
    yield Exec(COMPLETE_NODE, {**_node_key(p), "output": output, "at": e.occurred_at})


def _node_failed(p: NodeFailed, e: Event) -> Plan:
    yield Exec(FAIL_NODE, {**_node_key(p), "error": p.error, "at": e.occurred_at})


def _node_skipped(p: NodeSkipped, e: Event) -> Plan:
    key = {"run_id": p.run_id, "node_id": p.node_id, "iteration": p.iteration}
    yield Exec(SKIP_NODE, {**key, "reason": p.reason, "warning": p.warning, "at": e.occurred_at})


# --- node attempts coalesced within a batch ---------------------------------------------------

# A node attempt scheduled, started and completed in one batch, as one upsert: the
# schedule's, with the row the two updates would leave. Each store writes a batch's
# attempts as rows of one statement (SQLite: VALUES, Postgres: unnest) between these
# two parts; RETURNING names those that took (none: a later attempt holds the row,
# and the updates then run as they are, against it).
SCHEDULE_NODES_AS_OF = """
INSERT INTO node_runs (run_id, node_id, iteration, type, status, attempt, worker, output,
                       scheduled_at, started_at, finished_at)"""
NODE_ATTEMPT_UPSERT = """ON CONFLICT (run_id, node_id, iteration) DO UPDATE SET
    type = excluded.type, status = excluded.status, attempt = excluded.attempt,
    worker = excluded.worker, output = excluded.output, error = NULL, skip_reason = NULL,
    warning = FALSE, scheduled_at = excluded.scheduled_at, started_at = excluded.started_at,
    finished_at = excluded.finished_at
WHERE node_runs.attempt < excluded.attempt
RETURNING run_id, node_id, iteration"""
# The values of a row, in the order of the columns above.
NODE_ATTEMPT_PARAMS = (
    "run_id", "node_id", "iteration", "type", "status", "attempt", "worker", "output", "at",
    "started_at", "finished_at",
)  # fmt: skip

NodeKey: TypeAlias = tuple[str, str, int]


class NodeAttempts:
    """Coalesces, within one batch, a node attempt's `SCHEDULE_NODE`, `START_NODE` and
    `COMPLETE_NODE` into one row of one upsert (a run of the 5-node DAG made 15
    statements of them: two thirds of the projector's). Exact: a held attempt is
    written before any other statement that names node_runs runs, so every statement
    that could see or change its row still finds it as the three statements in order
    would have left it; an update merges only into an attempt it would have matched
    (same attempt, a status its WHERE accepts), anything else writes the attempt first.
    Pure: the store writes what this hands it (`NodeAttempt.row`, `missed`)."""

    def __init__(self) -> None:
        self._pending: dict[NodeKey, NodeAttempt] = {}

    def take(self, step: Step) -> tuple[bool, list[NodeAttempt]]:
        """Whether `step` is held here (`drain` gives it back), and the attempts to
        write first, before the caller runs `step` if it is not held."""
        sql, params = step.sql, step.params
        if sql is SCHEDULE_NODE:
            key = _node_key_of(params)
            earlier = self._pending.pop(key, None)
            self._pending[key] = NodeAttempt(step)
            return True, [] if earlier is None else [earlier]
        if sql is START_NODE or sql is COMPLETE_NODE:
            attempt = self._pending.get(_node_key_of(params))
            if attempt is not None and attempt.merge(step):
                return True, []
        if "node_runs" in sql:
            return False, self.drain()
        return False, []

    def drain(self) -> list[NodeAttempt]:
        """Every held attempt, to write now; none held after."""
        attempts = list(self._pending.values())
        self._pending = {}
        return attempts


class NodeAttempt:
    """One attempt's schedule and the updates merged into it."""

    __slots__ = ("finished_at", "merged", "output", "schedule", "started_at", "status", "worker")

    def __init__(self, schedule: Step) -> None:
        self.schedule = schedule
        self.merged: list[Step] = []
        self.status = "scheduled"
        self.worker: str | None = None
        self.output: str | None = None
        self.started_at: int | None = None
        self.finished_at: int | None = None

    def merge(self, update: Step) -> bool:
        """Apply `update` here if it would match the row the schedule left."""
        params = update.params
        if params["attempt"] != self.schedule.params["attempt"]:
            return False
        if update.sql is START_NODE:
            if self.status == "scheduled":
                self.status, self.worker = "running", params["worker"]
                self.started_at = params["at"]
        elif self.status in ("scheduled", "running", "waiting"):
            self.status, self.output = "completed", params["output"]
            self.finished_at = params["at"]
        self.merged.append(update)
        return True

    def row(self) -> Params:
        return {
            **self.schedule.params,
            "status": self.status,
            "worker": self.worker,
            "output": self.output,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }

    def missed(self, took: Container[NodeKey]) -> list[Step]:
        """The updates to run alone when the upsert did not take (its key not in
        `took`): they then apply to the row as they are, as they would have."""
        if not self.merged or _node_key_of(self.schedule.params) in took:
            return []
        return self.merged


def _node_key_of(params: Params) -> NodeKey:
    return params["run_id"], params["node_id"], params["iteration"]


# --- timers --------------------------------------------------------------------------------

INSERT_TIMER = """
INSERT INTO timers (timer_id, run_id, fire_at, purpose, node_id, iteration, attempt, fired)
VALUES (:timer_id, :run_id, :fire_at, :purpose, :node_id, :iteration, :attempt, FALSE)
ON CONFLICT (timer_id) DO NOTHING
"""

FIRE_TIMER = "UPDATE timers SET fired = TRUE WHERE timer_id = :timer_id"


def _timer_set(p: TimerSet, e: Event) -> Plan:
    """A timer set after its run ended would never be cancelled: keep it out."""
    run = yield Fetch(SELECT_RUN_STATUS, {"run_id": p.run_id})
    if run is not None and run["status"] in TERMINAL_RUN_STATUSES:
        return
    node = {"run_id": p.run_id, "node_id": p.node_id, "iteration": p.iteration}
    timer = {"timer_id": p.timer_id, "fire_at": p.fire_at, "purpose": p.purpose}
    yield Exec(INSERT_TIMER, {**node, **timer, "attempt": p.attempt})
    if p.purpose == "retry":
        yield Exec(MARK_RETRYING, {**node, "attempt": p.attempt})


def _timer_fired(p: TimerFired, e: Event) -> Plan:
    yield Exec(FIRE_TIMER, {"timer_id": p.timer_id})


# --- patches -------------------------------------------------------------------------------

INSERT_PATCH = """
INSERT INTO patches (run_id, patch_id, status, operations, reason, proposed_at, node_id)
VALUES (:run_id, :patch_id, 'proposed', :operations, :reason, :at, :node_id)
ON CONFLICT (run_id, patch_id) DO NOTHING
"""

AWAIT_REVIEW = """
UPDATE patches SET review = 'pending'
WHERE run_id = :run_id AND patch_id = :patch_id AND review IS NULL
"""

# The first decision wins, as in the coordinator.
RECORD_REVIEW = """
UPDATE patches SET review = :review, reviewed_by = :reviewed_by,
    review_reason = :review_reason, reviewed_at = :at
WHERE run_id = :run_id AND patch_id = :patch_id AND review = 'pending'
"""

PATCH_TO_APPLY = """
SELECT p.operations, r.definition FROM patches p JOIN runs r ON r.run_id = p.run_id
WHERE p.run_id = :run_id AND p.patch_id = :patch_id AND p.status = 'proposed'
"""

SET_DEFINITION = "UPDATE runs SET definition = :definition WHERE run_id = :run_id"

SET_REVISION = "UPDATE runs SET revision = :revision WHERE run_id = :run_id"

APPLY_PATCH = """
INSERT INTO patches (run_id, patch_id, status, revision, added_nodes, decided_at)
VALUES (:run_id, :patch_id, 'applied', :revision, :added_nodes, :at)
ON CONFLICT (run_id, patch_id) DO UPDATE SET status = 'applied',
    revision = excluded.revision, added_nodes = excluded.added_nodes,
    decided_at = excluded.decided_at
WHERE patches.status = 'proposed'
"""

REJECT_PATCH = """
INSERT INTO patches (run_id, patch_id, status, reasons, decided_at)
VALUES (:run_id, :patch_id, 'rejected', :reasons, :at)
ON CONFLICT (run_id, patch_id) DO UPDATE SET status = 'rejected',
    reasons = excluded.reasons, decided_at = excluded.decided_at
WHERE patches.status = 'proposed'
"""


def _patch_proposed(p: PatchProposed, e: Event) -> Plan:
    patch = {"run_id": p.run_id, "patch_id": p.patch_id, "reason": p.reason, "node_id": p.node_id}
    yield Exec(INSERT_PATCH, {**patch, "operations": dumps(p.operations), "at": e.occurred_at})
    yield Exec(REFRESH_WAITING, {"run_id": p.run_id})


def _patch_applied(p: PatchApplied, e: Event) -> Plan:
    """PatchApplied carries no operations: replay the proposed ones on the definition."""
    key = {"run_id": p.run_id, "patch_id": p.patch_id}
    row = yield Fetch(PATCH_TO_APPLY, key)
    if row is not None:
        definition = _patched(loads(row["definition"]), loads(row["operations"]), key)
        yield Exec(SET_DEFINITION, {"run_id": p.run_id, "definition": dumps(definition)})
    changes = {"revision": p.revision, "added_nodes": dumps(p.added_nodes), "at": e.occurred_at}
    yield Exec(APPLY_PATCH, {**key, **changes})
    yield Exec(SET_REVISION, {"run_id": p.run_id, "revision": p.revision})
    yield Exec(REFRESH_WAITING, {"run_id": p.run_id})


def _patched(definition: Any, operations: Any, key: Mapping[str, str]) -> Any:
    """The coordinator applied these operations already, so failing here means a bug;
    keep the old definition rather than stall every read model on one run."""
    try:
        return jsonpatch.apply_patch(definition, operations)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException):
        log.exception("cannot replay patch %(patch_id)s on run %(run_id)s", key)
        return definition


def _patch_rejected(p: PatchRejected, e: Event) -> Plan:
    key = {"run_id": p.run_id, "patch_id": p.patch_id}
    yield Exec(REJECT_PATCH, {**key, "reasons": dumps(p.reasons), "at": e.occurred_at})
    yield Exec(REFRESH_WAITING, {"run_id": p.run_id})


def _patch_review_requested(p: PatchReviewRequested, e: Event) -> Plan:
    yield Exec(AWAIT_REVIEW, {"run_id": p.run_id, "patch_id": p.patch_id})


def _patch_reviewed(p: PatchReviewed, e: Event) -> Plan:
    review = "approved" if p.decision == "approve" else "rejected"
    key = {"run_id": p.run_id, "patch_id": p.patch_id}
    decision = {"review": review, "reviewed_by": p.reviewed_by, "review_reason": p.reason}
    yield Exec(RECORD_REVIEW, {**key, **decision, "at": e.occurred_at})


# --- approvals -----------------------------------------------------------------------------

INSERT_APPROVAL = """
INSERT INTO approvals (approval_id, run_id, node_id, iteration, attempt, status, message,
                       payload, approvers, deadline, on_timeout, requested_at, decided_at,
                       policy, votes)
VALUES (:approval_id, :run_id, :node_id, :iteration, :attempt, :status, :message, :payload,
        :approvers, :deadline, :on_timeout, :at, :decided_at, :policy, '[]')
ON CONFLICT (approval_id) DO NOTHING
"""

# The work item that asked for the approval: it holds the attempt and the node's config.
SELECT_APPROVAL_TASK = """
SELECT data FROM timeline WHERE event_id = :event_id AND type = 'NodeScheduled'
"""

# The first decision wins: later ones (a race, a timeout after a human) change nothing.
DECIDE_APPROVAL = """
UPDATE approvals SET status = :status, decision = :decision, decided_by = :decided_by,
    comments = :comments, decided_at = :at, decision_event_id = :event_id
WHERE approval_id = :approval_id AND status = 'pending'
"""

_APPROVING = frozenset({"approve", "approved"})

# A hitl node waits while its approval is pending (its run is 'waiting' meanwhile).
AWAIT_APPROVAL = """
UPDATE node_runs SET status = 'waiting'
WHERE run_id = :run_id AND node_id = :node_id AND iteration = :iteration
  AND attempt = :attempt AND status IN ('scheduled', 'running')
"""

# Decided: its worker is finishing the node.
RESUME_AFTER_APPROVAL = """
UPDATE node_runs SET status = 'running'
WHERE status = 'waiting' AND EXISTS (
    SELECT 1 FROM approvals a WHERE a.approval_id = :approval_id
      AND a.run_id = node_runs.run_id AND a.node_id = node_runs.node_id
      AND a.iteration = node_runs.iteration
      AND (a.attempt IS NULL OR a.attempt = node_runs.attempt))
"""


def _approval_requested(p: ApprovalRequested, e: Event) -> Plan:
    """An approval asked for after its run ended can never be decided: it lands
    cancelled, so no inbox shows it and no deadline fires for it."""
    run = yield Fetch(SELECT_RUN_STATUS, {"run_id": p.run_id})
    ended = run is not None and run["status"] in TERMINAL_RUN_STATUSES
    task = yield Fetch(SELECT_APPROVAL_TASK, {"event_id": e.causation_id})
    attempt, on_timeout = _approval_task(task)
    policy = _approval_policy(task)
    yield Exec(
        INSERT_APPROVAL,
        {
            "approval_id": p.approval_id,
            "run_id": p.run_id,
            "node_id": p.node_id,
            "iteration": p.iteration,
            "attempt": attempt,
            "status": "cancelled" if ended else "pending",
            "message": p.message,
            "payload": dumps(p.payload),
            "approvers": dumps(p.approvers),
            "deadline": p.deadline,
            "on_timeout": on_timeout,
            "at": e.occurred_at,
            "decided_at": e.occurred_at if ended else None,
            "policy": dumps(policy),
        },
    )
    if not ended and attempt is not None:
        node = {"run_id": p.run_id, "node_id": p.node_id, "iteration": p.iteration}
        yield Exec(AWAIT_APPROVAL, {**node, "attempt": attempt})
    yield Exec(REFRESH_WAITING, {"run_id": p.run_id})


def _approval_task(task: Row | None) -> tuple[int | None, str | None]:
    """(attempt, on_timeout) from the requesting task's timeline row, if there is one."""
    if task is None:
        return None, None
    data = loads(task["data"])
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    return data.get("attempt"), config.get("on_timeout", ON_TIMEOUT_DEFAULT)


def _approval_policy(task: Row | None) -> dict[str, Any]:
    """What deciding the approval needs, from the requesting task's node config."""
    data = loads(task["data"]) if task is not None else {}
    found = data.get("config") if isinstance(data, dict) else None
    config: dict[str, Any] = found if isinstance(found, dict) else {}
    escalation = config.get("escalation")
    return {
        "quorum": config.get("quorum", 1),
        "reject_quorum": config.get("reject_quorum", 1),
        "allow_self_approval": bool(config.get("allow_self_approval", False)),
        "signals": config.get("signals") or [],
        "escalation_levels": len(escalation) if isinstance(escalation, list) else 0,
    }


SELECT_APPROVAL_VOTES = """
SELECT votes FROM approvals WHERE approval_id = :approval_id AND status = 'pending'
"""

RECORD_VOTES = "UPDATE approvals SET votes = :votes WHERE approval_id = :approval_id"

ESCALATE_APPROVAL = """
UPDATE approvals SET approvers = :approvers, deadline = :deadline, level = :level
WHERE approval_id = :approval_id AND status = 'pending'
"""


def _approval_voted(p: ApprovalVoted, e: Event) -> Plan:
    """A pending approval's votes, each voter once (the first vote stands, as in the fold)."""
    row = yield Fetch(SELECT_APPROVAL_VOTES, {"approval_id": p.approval_id})
    if row is None:
        return
    votes = loads(row["votes"]) or []
    if any(v.get("voter") == p.voter for v in votes):
        return
    vote = {
        "voter": p.voter,
        "decision": p.decision,
        "comments": p.comments,
        "at": e.occurred_at,
        "event_id": e.event_id,
    }
    yield Exec(RECORD_VOTES, {"approval_id": p.approval_id, "votes": dumps([*votes, vote])})


def _approval_escalated(p: ApprovalEscalated, e: Event) -> Plan:
    yield Exec(
        ESCALATE_APPROVAL,
        {
            "approval_id": p.approval_id,
            "approvers": dumps(p.approvers),
            "deadline": p.deadline,
            "level": p.level,
        },
    )


def _approval_decided(p: ApprovalDecided, e: Event) -> Plan:
    """Anything but an explicit approval counts as a rejection (the safe reading);
    `decision` keeps what was decided (a timeout may say "fail")."""
    status = "approved" if p.decision.lower() in _APPROVING else "rejected"
    decision = {
        "status": status,
        "decision": p.decision,
        "decided_by": p.decided_by,
        "comments": p.comments,
    }
    yield Exec(
        DECIDE_APPROVAL,
        {"approval_id": p.approval_id, **decision, "at": e.occurred_at, "event_id": e.event_id},
    )
    yield Exec(RESUME_AFTER_APPROVAL, {"approval_id": p.approval_id})
    yield Exec(REFRESH_WAITING, {"run_id": p.run_id})


# --- LLM usage and run budgets ------------------------------------------------------------

INSERT_RUN_BUDGET = """
INSERT INTO run_budgets (run_id, budget) VALUES (:run_id, :budget)
ON CONFLICT (run_id) DO NOTHING
"""

SELECT_RUN_TENANT = "SELECT tenant FROM runs WHERE run_id = :run_id"

INSERT_USAGE = """
INSERT INTO llm_usage (event_id, run_id, node_id, iteration, attempt, tenant, model,
                       llm_calls, prompt_tokens, completion_tokens, total_tokens,
                       cached_tokens, cost_nano_usd, recorded_at)
VALUES (:event_id, :run_id, :node_id, :iteration, :attempt, :tenant, :model, :llm_calls,
        :prompt_tokens, :completion_tokens, :total_tokens, :cached_tokens, :cost_nano_usd,
        :recorded_at)
ON CONFLICT (event_id) DO NOTHING
"""


def _run_budget(p: RunSubmitted) -> Plan:
    """The submitted definition's `budget`, apart from the definition patches change."""
    budget = p.definition.get("budget") if isinstance(p.definition, dict) else None
    if isinstance(budget, dict):
        yield Exec(INSERT_RUN_BUDGET, {"run_id": p.run_id, "budget": dumps(budget)})


def _agent_usage_recorded(p: AgentUsageRecorded, e: Event) -> Plan:
    """One attempt's usage, at the cost the event recorded (never repriced here, so a
    rebuild adds up to the same figures whatever the prices are today)."""
    tenant = p.tenant
    if tenant is None:  # recorded before usage named its tenant: the run's
        run = yield Fetch(SELECT_RUN_TENANT, {"run_id": p.run_id})
        tenant = (run or {}).get("tenant") or DEFAULT_TENANT
    yield Exec(
        INSERT_USAGE,
        {
            "event_id": e.event_id,
            "run_id": p.run_id,
            "node_id": p.node_id,
            "iteration": p.iteration,
            "attempt": p.attempt,
            "tenant": tenant,
            "model": p.model,
            "llm_calls": p.llm_calls,
            "prompt_tokens": p.prompt_tokens,
            "completion_tokens": p.completion_tokens,
            "total_tokens": p.total_tokens,
            "cached_tokens": p.cached_tokens,
            "cost_nano_usd": p.cost_nano_usd,
            "recorded_at": e.occurred_at,
        },
    )


# Every payload type that changes a table besides the timeline; RunCancelRequested
# only lands in the timeline (and bumps the run's `updated_at`).
_HANDLERS: dict[type[Any], Callable[[Any, Event], Plan]] = {
    WorkflowCreated: _workflow_created,
    TagMoved: _tag_moved,
    RunSubmitted: _run_submitted,
    NodeScheduled: _node_scheduled,
    NodeStarted: _node_started,
    NodeCompleted: _node_completed,
    NodeFailed: _node_failed,
    NodeSkipped: _node_skipped,
    TimerSet: _timer_set,
    TimerFired: _timer_fired,
    PatchProposed: _patch_proposed,
    PatchApplied: _patch_applied,
    PatchRejected: _patch_rejected,
    PatchReviewRequested: _patch_review_requested,
    PatchReviewed: _patch_reviewed,
    ApprovalRequested: _approval_requested,
    ApprovalDecided: _approval_decided,
    ApprovalVoted: _approval_voted,
    ApprovalEscalated: _approval_escalated,
    RunCompleted: _run_completed,
    RunFailed: _run_failed,
    RunCancelled: _run_cancelled,
    AgentUsageRecorded: _agent_usage_recorded,
}
