"""The event catalog: every state change in aob, as plain frozen dataclasses.

An `Event` is an envelope (id, type, key, time, trace, causation, actor) around one
payload. Payloads are the domain's vocabulary; `aob.events.codec` turns them into
Avro single-object bytes and back, using the `.avsc` schemas in `events/schemas/`.

Fields typed `Json` hold any JSON value (dict, list, str, int, float, bool, None);
on the wire they are JSON text inside an Avro string. Times are epoch milliseconds:
the domain never reads a clock, time arrives inside events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

Json: TypeAlias = Any

RUNS_TOPIC = "aob.runs"
WORKFLOWS_TOPIC = "aob.workflows"
TOOLS_TOPIC = "aob.tools"
TASKS_TOPIC_PREFIX = "aob.tasks."
# Tenant expressions the coordinator needs decided (edge conditions, run output): the
# fold asks here and an evaluator answers on aob.runs, so the verdict is in the log.
EXPRESSIONS_TOPIC = "aob.expressions"
# Records a service could not decode, fold or handle, set aside with the reason.
DEADLETTER_TOPIC = "aob.deadletter"


def task_topic(node_type: str) -> str:
    """The topic a worker for `node_type` consumes its work items from."""
    return TASKS_TOPIC_PREFIX + node_type


# --- aob.workflows: definitions and tags, keyed by workflow id / tag -------------


@dataclass(frozen=True, slots=True)
class WorkflowCreated:
    """A new version of a workflow definition was stored."""

    workflow_id: str
    version: int
    definition: Json
    tenant: str | None = None  # the namespace it belongs to; None: the default tenant


@dataclass(frozen=True, slots=True)
class TagMoved:
    """A tag (like a git ref) now points at `workflow_id`@`version`."""

    tag: str
    workflow_id: str
    version: int
    previous_workflow_id: str | None = None
    previous_version: int | None = None
    tenant: str | None = None


# Requests the single writer of a workflow id or tag decides (aob.projections.runtime
# .decider): the API appends one, the owner of its aob.workflows partition appends the
# decision, whose envelope names the request as its `causation_id`.


@dataclass(frozen=True, slots=True)
class WorkflowCreateRequested:
    """Asks for the next version of `workflow_id` (and to move `tag` to it).

    Keyed by workflow id. Decided by `WorkflowCreated` with the next version (and a
    `TagMoveRequested` for `tag`), or by `WorkflowRequestRefused`.
    """

    workflow_id: str
    definition: Json
    tag: str | None = None
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class TagMoveRequested:
    """Asks to point `tag` at `workflow_id`@`version`, a version that exists.

    Keyed by tag. Decided by `TagMoved` (with the target it replaces) or by
    `WorkflowRequestRefused`.
    """

    tag: str
    workflow_id: str
    version: int
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowRequestRefused:
    """A request on aob.workflows was refused. `request_id` is its event id; `reason`
    is "name-taken" when `name` (the `subject`: "workflow id" or "tag") belongs to
    another tenant."""

    request_id: str
    reason: str
    subject: str
    name: str


# --- aob.runs: everything run-scoped, keyed by run id -----------------------------


@dataclass(frozen=True, slots=True)
class RunSubmitted:
    """A run was accepted. `definition` is the full base definition it runs.

    `known_types` are the node types the platform could execute at submission;
    nodes of any other type complete as skipped with a warning.

    `checkpoint` is set when the run replays another from a point of its history:
    {"run_id": <the run replayed>, "from_event": <its last event kept>,
    "outputs": {node id: output}} - the nodes that had completed by then start out
    completed with those outputs, and only the rest of the workflow runs.
    """

    run_id: str
    definition: Json
    inputs: Json
    known_types: list[str]
    workflow_id: str | None = None
    version: int | None = None
    tag: str | None = None
    checkpoint: Json = None
    # The namespace of the submitter (aob.platform.auth); None: the default tenant.
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class NodeScheduled:
    """A node instance is due to run; also the work item on `aob.tasks.<type>`.

    `input` is the context the node sees: {"inputs": ..., "nodes": {id: output},
    "iteration": n}. `config` is the node's config from the materialized definition.
    Outputs stored in the blob store are not copied: `output_refs` maps such a node id
    to its blob reference (its `input.nodes` entry is null) and the worker fetches it.
    `tenant` is the run's (None: the default tenant), for secrets bound to tenants.
    """

    run_id: str
    node_id: str
    node_type: str
    iteration: int
    attempt: int
    config: Json
    input: Json
    timeout_ms: int | None = None
    output_refs: dict[str, str] = field(default_factory=dict)
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class NodeStarted:
    run_id: str
    node_id: str
    iteration: int
    attempt: int
    worker: str


@dataclass(frozen=True, slots=True)
class NodeCompleted:
    """`output_ref` is set (and `output` null) when the output is in the blob store."""

    run_id: str
    node_id: str
    iteration: int
    attempt: int
    output: Json
    output_ref: str | None = None


@dataclass(frozen=True, slots=True)
class NodeFailed:
    """A node attempt failed. `retryable=False` skips the remaining retries, and
    `not_retried` says why (e.g. "jq errors are deterministic")."""

    run_id: str
    node_id: str
    iteration: int
    attempt: int
    error: str
    retryable: bool = True
    not_retried: str | None = None


@dataclass(frozen=True, slots=True)
class LoopExhausted:
    """A loop whose condition still held ended on its bound (`iterations` runs of its
    body, its max_iterations). A warning, or the run's failure when the loop says
    `on_limit: fail` (`failed`)."""

    run_id: str
    source: str
    target: str
    iterations: int
    failed: bool = False


@dataclass(frozen=True, slots=True)
class NodeSkipped:
    """A node instance will not run (dead path, unknown type, ...).

    `warning` is set when the skip is something a user should look at.
    """

    run_id: str
    node_id: str
    iteration: int
    reason: str
    warning: bool = False


@dataclass(frozen=True, slots=True)
class TimerSet:
    """Ask the timer service to append `TimerFired` at `fire_at` (epoch ms).

    `purpose` is "retry" (start the next attempt) or "timeout" (fail the attempt).
    """

    run_id: str
    timer_id: str
    fire_at: int
    purpose: str
    node_id: str
    iteration: int
    attempt: int


@dataclass(frozen=True, slots=True)
class TimerFired:
    run_id: str
    timer_id: str


@dataclass(frozen=True, slots=True)
class PatchProposed:
    """RFC 6902 operations on the run's materialized definition."""

    run_id: str
    patch_id: str
    operations: Json
    reason: str = ""
    # The agent node that proposed it; None when a person did (through the API).
    node_id: str | None = None
    # The proposing agent's instance: only its current attempt may patch the run.
    iteration: int | None = None
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class PatchApplied:
    run_id: str
    patch_id: str
    revision: int
    added_nodes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PatchRejected:
    run_id: str
    patch_id: str
    reasons: list[str]


@dataclass(frozen=True, slots=True)
class PatchReviewRequested:
    """A valid agent patch of a run whose workflow has `patch_policy: review` waits
    for a reviewer (`PatchReviewed`); until then the run cannot complete."""

    run_id: str
    patch_id: str


@dataclass(frozen=True, slots=True)
class PatchReviewed:
    """A reviewer's decision on a patch awaiting review: "approve" or "reject".

    The coordinator applies an approved patch if it still applies to the run as it
    is by then (else it rejects it), and rejects a rejected one with `reason`.
    """

    run_id: str
    patch_id: str
    decision: str
    reviewed_by: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AgentUsageRecorded:
    """What one attempt of an agent node used of its LLM, summed over its calls.

    `cached_tokens` are prompt tokens the provider served from its prompt cache.
    """

    run_id: str
    node_id: str
    iteration: int
    attempt: int
    model: str
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0
    tool_calls: int = 0
    outcome: str = "completed"
    # The attempt's tool calls in order: [{name, arguments, result, elapsed_ms}], the
    # texts cut short and the list capped (tool_calls counts them all); see the runner.
    calls: Json = field(default_factory=list)
    # The run's tenant (None: recorded before usage carried it; the run's tenant applies).
    tenant: str | None = None
    # The cost at the prices in force when recorded, in billionths of a USD (integers
    # sum exactly); None when the model has no price. Recorded, never recomputed, so
    # history stays right when prices change: `price` is what it was computed with,
    # {input, output, cached_input} in USD per million tokens (None: no price).
    cost_nano_usd: int | None = None
    price: Json = None


# --- aob.tools: tools agents can use, keyed by tool name ------------------------


@dataclass(frozen=True, slots=True)
class ToolRegistered:
    """A named tool for agents: `kind` "pipeline" (a composite tool: a reusable
    pipeline) or "openapi" (an OpenAPI document whose operations agents may call).
    Registering a name again replaces it (within its tenant)."""

    name: str
    kind: str
    spec: Json
    description: str = ""
    # The namespace of the registrant; only its runs' agents see it. None: the default tenant.
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalRequested:
    run_id: str
    approval_id: str
    node_id: str
    iteration: int
    message: str
    payload: Json = None
    approvers: list[str] = field(default_factory=list)
    deadline: int | None = None


@dataclass(frozen=True, slots=True)
class ApprovalDecided:
    """The approval's outcome; the first one in log order wins.

    `votes` lists the votes of a quorum approval ([{voter, decision, comments, at}]),
    `signal` the signal that ended a wait ({name, payload, sent_by, sent_at, event_id});
    both None otherwise.
    """

    run_id: str
    approval_id: str
    decision: str
    decided_by: str
    comments: str = ""
    votes: Json = None
    signal: Json = None


@dataclass(frozen=True, slots=True)
class ApprovalVoted:
    """One person's vote on an approval that needs a quorum (config `quorum` > 1).
    The coordinator counts each voter once and decides (`ApprovalDecided`) when
    `quorum` approvals or `reject_quorum` rejections are in."""

    run_id: str
    approval_id: str
    decision: str
    voter: str
    comments: str = ""


@dataclass(frozen=True, slots=True)
class ApprovalEscalated:
    """An approval reached its deadline at `level - 1` and was re-requested from
    another group (config `escalation[level - 1]`), who may decide until `deadline`.
    `approvers` are everyone who may decide from now on (names, then "role:" names)."""

    run_id: str
    approval_id: str
    level: int
    approvers: list[str]
    deadline: int | None = None


@dataclass(frozen=True, slots=True)
class SignalReceived:
    """A named external signal sent to a run through the API. Ends a hitl node that
    waits for `name` (config `signals`), now or later in the run (the lookback)."""

    run_id: str
    name: str
    payload: Json = None
    sent_by: str = ""


@dataclass(frozen=True, slots=True)
class RunCancelRequested:
    run_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RunCompleted:
    """`output_ref` is set (and `output` null) when the output is in the blob store."""

    run_id: str
    output: Json
    output_ref: str | None = None


@dataclass(frozen=True, slots=True)
class ExpressionRequested:
    """The coordinator needs a tenant jq expression decided; also the work item on
    `aob.expressions`. The fold never runs tenant code: an evaluator runs `program`
    over `input` (with `output_refs` fetched, as for `NodeScheduled`) under the
    sandbox's budgets and answers `ExpressionEvaluated`, so every replay of the log
    sees the same verdict.

    `purpose` is "edge" (`source` -> `target`), "loop" (the back-edge `source` ->
    `target`) or "output" (the run's output expression).
    """

    run_id: str
    request_id: str
    purpose: str
    program: str
    input: Json
    output_refs: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    target: str | None = None
    iteration: int = 0
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class ExpressionEvaluated:
    """The answer to `ExpressionRequested`: the first output (`result`, or in the blob
    store under `result_ref`), or why there is none (`error`, e.g. a budget)."""

    run_id: str
    request_id: str
    result: Json = None
    result_ref: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RecordDeadLettered:
    """A record a service set aside on `aob.deadletter`: it could not be decoded,
    folded or handled. `value` holds its original bytes, to inspect or replay."""

    service: str  # the consumer group that gave up on it
    source_topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    reason: str
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class RunFailed:
    run_id: str
    error: str
    node_id: str | None = None


@dataclass(frozen=True, slots=True)
class RunCancelled:
    run_id: str
    reason: str = ""


Payload: TypeAlias = (
    WorkflowCreated
    | TagMoved
    | RunSubmitted
    | NodeScheduled
    | NodeStarted
    | NodeCompleted
    | NodeFailed
    | NodeSkipped
    | TimerSet
    | TimerFired
    | PatchProposed
    | PatchApplied
    | PatchRejected
    | ApprovalRequested
    | ApprovalDecided
    | RunCancelRequested
    | RunCompleted
    | RunFailed
    | RunCancelled
    | PatchReviewRequested
    | PatchReviewed
    | AgentUsageRecorded
    | ToolRegistered
    | ExpressionRequested
    | ExpressionEvaluated
    | RecordDeadLettered
    | WorkflowCreateRequested
    | TagMoveRequested
    | WorkflowRequestRefused
    | LoopExhausted
    | ApprovalVoted
    | ApprovalEscalated
    | SignalReceived
)

PAYLOAD_TYPES: tuple[type[Any], ...] = (
    WorkflowCreated,
    TagMoved,
    RunSubmitted,
    NodeScheduled,
    NodeStarted,
    NodeCompleted,
    NodeFailed,
    NodeSkipped,
    TimerSet,
    TimerFired,
    PatchProposed,
    PatchApplied,
    PatchRejected,
    ApprovalRequested,
    ApprovalDecided,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    RunCancelled,
    PatchReviewRequested,
    PatchReviewed,
    AgentUsageRecorded,
    ToolRegistered,
    ExpressionRequested,
    ExpressionEvaluated,
    RecordDeadLettered,
    WorkflowCreateRequested,
    TagMoveRequested,
    WorkflowRequestRefused,
    LoopExhausted,
    ApprovalVoted,
    ApprovalEscalated,
    SignalReceived,
)
PAYLOAD_BY_NAME: dict[str, type[Any]] = {t.__name__: t for t in PAYLOAD_TYPES}

TERMINAL_RUN_EVENTS = (RunCompleted, RunFailed, RunCancelled)


@dataclass(frozen=True, slots=True)
class Event:
    """The envelope every payload travels in.

    `key` is the partitioning key: the run id for run events, the workflow id or tag
    for workflow events. `causation_id` is the id of the event that led to this one.
    `type` is the payload's class name.
    """

    event_id: str
    key: str
    occurred_at: int
    payload: Payload
    trace_id: str = ""
    causation_id: str | None = None
    actor: str = "system"
    # The OpenTelemetry span that wrote the event (aob.events.tracing), None untraced.
    span_id: str | None = None

    @property
    def type(self) -> str:
        return type(self.payload).__name__
