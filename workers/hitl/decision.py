"""How a decision ends a hitl node, and who may make one. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aob.events.types import ApprovalDecided, Event, NodeCompleted, NodeFailed
from aob.workers.hitl.request import ROLE_PREFIX

# `decided_by` of the decisions the deadline makes; people may not use the prefix.
TIMEOUT_DECIDER = "system:timeout"
RESERVED_PREFIX = "system:"
DECISIONS = ("approve", "reject")


def node_outcome(approval: Mapping[str, Any], decided: Event) -> NodeCompleted | NodeFailed:
    """The hitl node's outcome once `decided` (an ApprovalDecided) won `approval`.

    A timeout whose meaning is "fail" fails the node for good; any other decision
    completes it, and its output's `decision` routes the run (approve or reject).
    """
    assert isinstance(decided.payload, ApprovalDecided)
    decision = decided.payload
    node = (approval["run_id"], approval["node_id"], approval["iteration"], approval["attempt"])
    if decision.decision == "fail":
        error = f"approval {approval['approval_id']} got no decision by its deadline"
        return NodeFailed(*node, error=f"{error} (on_timeout: fail)", retryable=False)
    output = {
        "decision": "approve" if decision.decision.lower() in ("approve", "approved") else "reject",
        "decided_by": decision.decided_by,
        "comments": decision.comments,
        "decided_at": decided.occurred_at,
        "approval_id": decision.approval_id,
        "timed_out": decision.decided_by == TIMEOUT_DECIDER,
        "won": _winner(decision),
        "votes": decision.votes or [],
        "signal": decision.signal,
    }
    return NodeCompleted(*node, output=output)


def _winner(decision: ApprovalDecided) -> str:
    """Which of the events the node waited for ended it: a signal, the deadline, or a
    decision (one person's, or a quorum's)."""
    if decision.signal is not None:
        return "signal"
    return "timeout" if decision.decided_by == TIMEOUT_DECIDER else "approval"


def self_approval_refusal(
    policy: Mapping[str, Any] | None, decision: str, actor: str, submitter: str | None
) -> str | None:
    """Why `actor` may not approve a run they submitted, or None when they may.
    Rejecting is always allowed; `allow_self_approval` in the node's config lifts it."""
    if decision != "approve" or submitter is None or actor != submitter:
        return None
    if policy and policy.get("allow_self_approval"):
        return None
    return (
        f"{actor!r} submitted this run and may not approve it "
        "(the node's config does not set allow_self_approval: true)"
    )


def refusal(approvers: Iterable[str], actor: str, roles: Iterable[str]) -> str | None:
    """Why `actor` (holding `roles`) may not decide, or None when they may.

    With no named approvers and no roles, anyone may decide.
    """
    if actor.startswith(RESERVED_PREFIX):
        return f"actor names starting with {RESERVED_PREFIX!r} are reserved for aob itself"
    listed = list(approvers)
    names = [a for a in listed if not a.startswith(ROLE_PREFIX)]
    needed = [a.removeprefix(ROLE_PREFIX) for a in listed if a.startswith(ROLE_PREFIX)]
    if not listed or actor in names or set(needed) & set(roles):
        return None
    wanted = []
    if names:
        wanted.append(f"approvers {names}")
    if needed:
        wanted.append(f"roles {needed}")
    return f"{actor!r} may not decide this approval: it needs one of {' or '.join(wanted)}"
