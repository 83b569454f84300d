"""The coordinator's per-run state: what folding a run's events so far has built,
and its snapshot (`snapshot`/`restore`), which hosts keep in a changelog."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from aob.projections.workflow.compiler import compile_workflow
from aob.projections.workflow.ir import WorkflowIR

SNAPSHOT_VERSION: Final = 2  # 2 added tenant, output refs and awaited expressions


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class NodeStatus(StrEnum):
    PENDING = "pending"  # waiting for its inputs
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"  # failed, next attempt after a backoff timer
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


# A node instance holds a token while in one of these: the run's counter counts them.
OUTSTANDING = frozenset({NodeStatus.SCHEDULED, NodeStatus.RUNNING, NodeStatus.RETRY_WAIT})
FINISHED = frozenset({NodeStatus.COMPLETED, NodeStatus.FAILED, NodeStatus.SKIPPED})


@dataclass(slots=True)
class NodeState:
    """The latest instance of one node: its iteration, attempt and outcome."""

    iteration: int = 0
    attempt: int = 0
    status: NodeStatus = NodeStatus.PENDING
    # A skip with a warning (unknown node type) lets dependents run; a dead-path skip does not.
    passthrough: bool = False


@dataclass(frozen=True, slots=True)
class Timer:
    purpose: str  # "retry" | "timeout"
    node_id: str
    iteration: int
    attempt: int


@dataclass(frozen=True, slots=True)
class PendingExpression:
    """An `ExpressionRequested` the fold waits for: what its verdict decides."""

    purpose: str  # "edge" | "loop" | "output"
    source: str | None
    target: str | None
    iteration: int


@dataclass(slots=True)
class RunState:
    """Everything the fold knows about one run.

    `edge_taken` records, per forward edge (source, target), whether it was taken
    (True) or is dead (False) in the current iteration of its target; an absent
    edge is still undecided. `outputs` holds each node's latest output.
    `loop_counts` counts how often each loop edge (source, target) was taken: keyed
    by the edge, not its position, so a patch adding edges cannot shift the counts.
    `ever_started` names the nodes a patch may no longer rewrite; `patches` the
    patch ids already decided (`pending_patches` those still under review, which keep
    the run from completing). `pending_approvals` maps each approval awaiting a
    decision to the node that asked for it: it lapses when that node finishes.
    """

    run_id: str
    status: RunStatus
    base: dict[str, Any]
    definition: dict[str, Any]
    ir: WorkflowIR
    inputs: Any
    known_types: frozenset[str]
    nodes: dict[str, NodeState]
    edge_taken: dict[tuple[str, str], bool] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    loop_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    timers: dict[str, Timer] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    ever_started: set[str] = field(default_factory=set)
    pending_approvals: dict[str, str] = field(default_factory=dict)
    patches: set[str] = field(default_factory=set)
    # Valid agent patches waiting for a reviewer (patch_policy review): id -> operations.
    pending_patches: dict[str, Any] = field(default_factory=dict)
    revision: int = 0
    agents_added: int = 0
    outstanding: int = 0
    tenant: str | None = None
    output_refs: dict[str, str] = field(default_factory=dict)
    awaiting: dict[str, PendingExpression] = field(default_factory=dict)
    verdicts: dict[str, bool] = field(default_factory=dict)
    output_requests: int = 0  # output evaluations asked for so far (their ids count up)
    # Quorum votes, escalation levels and signals (aob.projections.coordinator.approvals).
    hitl: dict[str, Any] = field(default_factory=dict)

    @property
    def is_finished(self) -> bool:
        return self.status is not RunStatus.RUNNING

    def context(self, iteration: int = 0, reads: frozenset[str] | None = None) -> dict[str, Any]:
        """What jq expressions and node tasks see of the run: of the node outputs, those
        in `reads` (None: all). A task copying every output would make a run's log
        grow with the square of its length."""
        outputs = self.outputs
        nodes = dict(outputs) if reads is None else {n: outputs[n] for n in reads if n in outputs}
        return {"inputs": self.inputs, "nodes": nodes, "iteration": iteration}

    def refs(self, reads: frozenset[str] | None = None) -> dict[str, str]:
        """The blob references of the outputs in `reads` (None: all)."""
        refs = self.output_refs
        return dict(refs) if reads is None else {n: refs[n] for n in reads if n in refs}


# --- snapshots: a run's state as bytes ---------------------------------------------------


def snapshot(state: RunState) -> bytes:
    """`state` as JSON bytes; the compiled workflow is left out (compiled again from the
    run's materialized definition on restore, as the fold compiled it)."""
    document = {
        "v": SNAPSHOT_VERSION,
        "run_id": state.run_id,
        "status": state.status.value,
        "base": state.base,
        "definition": state.definition,
        "inputs": state.inputs,
        "known_types": sorted(state.known_types),
        "nodes": {
            node_id: [n.iteration, n.attempt, n.status.value, n.passthrough]
            for node_id, n in state.nodes.items()
        },
        "edge_taken": [[s, t, taken] for (s, t), taken in state.edge_taken.items()],
        "outputs": state.outputs,
        "loop_counts": [[s, t, count] for (s, t), count in state.loop_counts.items()],
        "timers": {
            timer_id: [t.purpose, t.node_id, t.iteration, t.attempt]
            for timer_id, t in state.timers.items()
        },
        "seen": sorted(state.seen),
        "ever_started": sorted(state.ever_started),
        "pending_approvals": state.pending_approvals,
        "patches": sorted(state.patches),
        "pending_patches": state.pending_patches,
        "revision": state.revision,
        "agents_added": state.agents_added,
        "outstanding": state.outstanding,
        "tenant": state.tenant,
        "output_refs": state.output_refs,
        "awaiting": {
            request_id: [p.purpose, p.source, p.target, p.iteration]
            for request_id, p in state.awaiting.items()
        },
        "verdicts": state.verdicts,
        "output_requests": state.output_requests,
        "hitl": state.hitl,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def restore(data: bytes) -> RunState:
    """The state `snapshot` made `data` from; equal to it, and folding every later event
    exactly as it would (same decisions, same ids)."""
    document = json.loads(data)
    if document.get("v") not in (1, SNAPSHOT_VERSION):
        raise ValueError(f"run snapshot version {document.get('v')!r} is not {SNAPSHOT_VERSION}")
    return RunState(
        run_id=document["run_id"],
        status=RunStatus(document["status"]),
        base=document["base"],
        definition=document["definition"],
        ir=compile_workflow(document["definition"]),
        inputs=document["inputs"],
        known_types=frozenset(document["known_types"]),
        nodes={
            node_id: NodeState(iteration, attempt, NodeStatus(status), passthrough)
            for node_id, (iteration, attempt, status, passthrough) in document["nodes"].items()
        },
        edge_taken={(s, t): taken for s, t, taken in document["edge_taken"]},
        outputs=document["outputs"],
        loop_counts={(s, t): count for s, t, count in document["loop_counts"]},
        timers={timer_id: Timer(*fields) for timer_id, fields in document["timers"].items()},
        seen=set(document["seen"]),
        ever_started=set(document["ever_started"]),
        pending_approvals=document["pending_approvals"],
        patches=set(document["patches"]),
        pending_patches=document["pending_patches"],
        revision=document["revision"],
        agents_added=document["agents_added"],
        outstanding=document["outstanding"],
        # Absent from version 1 snapshots, which predate them.
        tenant=document.get("tenant"),
        output_refs=document.get("output_refs", {}),
        awaiting={r: PendingExpression(*f) for r, f in document.get("awaiting", {}).items()},
        verdicts=document.get("verdicts", {}),
        output_requests=document.get("output_requests", 0),
        hitl=document.get("hitl", {}),
    )


# --- split snapshots: a run's state in parts, each written when it changes ---------------
#
# A whole snapshot holds the definition twice and every node output: written after each
# batch, a run's writes would grow with the square of its length. Split, the parts that
# rarely change are written once (the submission), when they change (the definition on a
# patch, a node's output when it lands) or once sealed (history: event ids seen and
# verdicts, in chunks). The core keeps the rest, whose size follows the workflow's, not
# the run's length, plus the history not sealed yet.

SPLIT_VERSION: Final = 1

# Fields of RunState each part holds (the core holds every other one but the compiled IR).
SUBMISSION_FIELDS: Final = frozenset({"base", "inputs", "known_types", "tenant"})
DEFINITION_FIELDS: Final = frozenset({"definition", "revision"})
OUTPUT_FIELDS: Final = frozenset({"outputs", "output_refs"})
HISTORY_FIELDS: Final = frozenset({"seen", "verdicts"})


@dataclass(slots=True)
class StoredParts:
    """A run's parts as read back: the core, the submission, the definition when the
    run was patched, one output per node, history chunks by index."""

    core: bytes | None = None
    submission: bytes | None = None
    definition: bytes | None = None
    outputs: dict[str, bytes] = field(default_factory=dict)
    history: dict[int, bytes] = field(default_factory=dict)


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def core_snapshot(
    state: RunState, recent_seen: list[str], recent_verdicts: dict[str, bool]
) -> bytes:
    """The core: everything but the parts, with the history not sealed yet."""
    return _json(
        {
            "v": SPLIT_VERSION,
            "run_id": state.run_id,
            "status": state.status.value,
            "nodes": {
                node_id: [n.iteration, n.attempt, n.status.value, n.passthrough]
                for node_id, n in state.nodes.items()
            },
            "edge_taken": [[s, t, taken] for (s, t), taken in state.edge_taken.items()],
            "loop_counts": [[s, t, count] for (s, t), count in state.loop_counts.items()],
            "timers": {
                timer_id: [t.purpose, t.node_id, t.iteration, t.attempt]
                for timer_id, t in state.timers.items()
            },
            "ever_started": sorted(state.ever_started),
            "pending_approvals": state.pending_approvals,
            "patches": sorted(state.patches),
            "pending_patches": state.pending_patches,
            "agents_added": state.agents_added,
            "outstanding": state.outstanding,
            "awaiting": {
                request_id: [p.purpose, p.source, p.target, p.iteration]
                for request_id, p in state.awaiting.items()
            },
            "output_requests": state.output_requests,
            "seen": recent_seen,
            "verdicts": recent_verdicts,
            "hitl": state.hitl,
        }
    )


def submission_snapshot(state: RunState) -> bytes:
    """What the run was submitted with: never changes."""
    return _json(
        {
            "base": state.base,
            "inputs": state.inputs,
            "known_types": sorted(state.known_types),
            "tenant": state.tenant,
        }
    )


def definition_snapshot(state: RunState) -> bytes:
    """The materialized definition of a patched run (unpatched, it is the base)."""
    return _json({"definition": state.definition, "revision": state.revision})


def output_snapshot(state: RunState, node_id: str) -> bytes:
    """A node's latest output and its blob reference."""
    return _json({"outputs": state.outputs[node_id], "output_refs": state.output_refs.get(node_id)})


def history_snapshot(seen: list[str], verdicts: dict[str, bool]) -> bytes:
    """A sealed chunk of history: ids of events folded, verdicts reached."""
    return _json({"seen": seen, "verdicts": verdicts})


def assemble(parts: StoredParts) -> RunState:
    """The state whose parts `parts` are (raises if the core or submission is missing)."""
    if parts.core is None or parts.submission is None:
        raise ValueError("a run's core or submission is missing")
    core = json.loads(parts.core)
    if core.get("v") != SPLIT_VERSION:
        raise ValueError(f"run core version {core.get('v')!r} is not {SPLIT_VERSION}")
    submitted = json.loads(parts.submission)
    definition, revision = submitted["base"], 0
    if parts.definition is not None:
        patched = json.loads(parts.definition)
        definition, revision = patched["definition"], patched["revision"]
    outputs: dict[str, Any] = {}
    refs: dict[str, str] = {}
    for node_id, data in parts.outputs.items():
        output = json.loads(data)
        outputs[node_id] = output["outputs"]
        if output["output_refs"] is not None:
            refs[node_id] = output["output_refs"]
    seen: set[str] = set()
    verdicts: dict[str, bool] = {}
    for index in sorted(parts.history):  # in order: verdicts keep their order
        chunk = json.loads(parts.history[index])
        seen.update(chunk["seen"])
        verdicts.update(chunk["verdicts"])
    seen.update(core["seen"])
    verdicts.update(core["verdicts"])
    return RunState(
        run_id=core["run_id"],
        status=RunStatus(core["status"]),
        base=submitted["base"],
        definition=definition,
        ir=compile_workflow(definition),
        inputs=submitted["inputs"],
        known_types=frozenset(submitted["known_types"]),
        nodes={
            node_id: NodeState(iteration, attempt, NodeStatus(status), passthrough)
            for node_id, (iteration, attempt, status, passthrough) in core["nodes"].items()
        },
        edge_taken={(s, t): taken for s, t, taken in core["edge_taken"]},
        outputs=outputs,
        loop_counts={(s, t): count for s, t, count in core["loop_counts"]},
        timers={timer_id: Timer(*fields) for timer_id, fields in core["timers"].items()},
        seen=seen,
        ever_started=set(core["ever_started"]),
        pending_approvals=core["pending_approvals"],
        patches=set(core["patches"]),
        pending_patches=core["pending_patches"],
        revision=revision,
        agents_added=core["agents_added"],
        outstanding=core["outstanding"],
        tenant=submitted["tenant"],
        output_refs=refs,
        awaiting={r: PendingExpression(*f) for r, f in core["awaiting"].items()},
        verdicts=verdicts,
        output_requests=core["output_requests"],
        hitl=core.get("hitl", {}),  # absent from cores written before it
    )
