"""The coordinator's per-run state: what folding a run's events so far has built."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aob.projections.workflow.ir import WorkflowIR


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

    @property
    def is_finished(self) -> bool:
        return self.status is not RunStatus.RUNNING

    def context(self, iteration: int = 0) -> dict[str, Any]:
        """What jq expressions and node tasks see of the run."""
        return {"inputs": self.inputs, "nodes": dict(self.outputs), "iteration": iteration}
