"""What the coordinator decides about approvals beyond "the first decision wins":
quorums, escalation on a deadline and waits ended by a signal. Pure functions over
the run state; the fold calls them and they emit through the fold's step.

Their state lives in `RunState.hitl`, a JSON-able dict (kept in snapshots as is):

- "votes": {approval id: [[voter, decision, comments, at], ...]} of quorum approvals;
- "levels": {approval id: escalation level reached} (absent: 0, the first group);
- "signals": [[event id, name, payload, sent_by, at], ...] every signal the run got,
  oldest first, at most `MAX_SIGNALS_PER_RUN` (the API refuses more);
- "used": {node id: [signal event ids]} the signals each node's waits consumed.

Every decision made here is an event: `ApprovalDecided` (with its votes or its
signal) and `ApprovalEscalated`, so a replay reaches the same ones.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from aob.events.types import (
    ApprovalDecided,
    ApprovalEscalated,
    ApprovalRequested,
    ApprovalVoted,
    Event,
    Payload,
    SignalReceived,
    TimerSet,
)
from aob.projections.coordinator.state import OUTSTANDING, RunState

APPROVAL_TIMER: Final = "approval"
# Who decides an approval whose quorum is reached, or that a signal ended.
QUORUM_DECIDER: Final = "system:quorum"
SIGNAL_DECIDER_PREFIX: Final = "system:signal:"
ROLE_PREFIX: Final = "role:"
# Bounds (the node type's schema and the API refuse more; the fold holds them too).
MAX_SIGNALS_PER_RUN: Final = 100
MAX_VOTES_PER_APPROVAL: Final = 100


class Step(Protocol):
    """What these functions need of the fold's step."""

    state: RunState
    cause: Event
    now: int

    def emit(self, payload: Payload) -> None: ...


def approval_timer_id(run_id: str, approval_id: str, level: int = 0) -> str:
    """The deadline timer of an approval's `level` (0: the first request)."""
    base = f"{run_id}:{approval_id}:{APPROVAL_TIMER}"
    return base if level == 0 else f"{base}:{level}"


def _hitl(state: RunState, part: str) -> Any:
    return state.hitl.setdefault(part, [] if part == "signals" else {})


def _config(state: RunState, approval_id: str) -> dict[str, Any]:
    node_id = state.pending_approvals[approval_id]
    spec = state.ir.nodes.get(node_id)
    config = spec.config if spec is not None else None
    return config if isinstance(config, dict) else {}


def level_of(state: RunState, approval_id: str) -> int:
    return int(state.hitl.get("levels", {}).get(approval_id, 0))


def timed_out_approval(state: RunState, timer_id: str) -> str | None:
    """The pending approval whose current deadline `timer_id` is, if any."""
    for approval_id in state.pending_approvals:
        if approval_timer_id(state.run_id, approval_id, level_of(state, approval_id)) == timer_id:
            return approval_id
    return None


def forget(state: RunState, approval_id: str) -> None:
    """An approval was decided: drop what only its pending state needed."""
    level = state.hitl.get("levels", {}).pop(approval_id, 0)
    state.hitl.get("votes", {}).pop(approval_id, None)
    for reached in range(1, level + 1):
        state.timers.pop(approval_timer_id(state.run_id, approval_id, reached), None)


# --- quorum --------------------------------------------------------------------------


def on_vote(step: Step, vote: ApprovalVoted) -> None:
    """Count `vote` once per voter; decide when a quorum either way is reached."""
    state = step.state
    if vote.approval_id not in state.pending_approvals:
        return  # decided already, or its node finished
    votes: list[list[Any]] = _hitl(state, "votes").setdefault(vote.approval_id, [])
    if any(v[0] == vote.voter for v in votes) or len(votes) >= MAX_VOTES_PER_APPROVAL:
        return  # a voter counts once: the first vote stands
    votes.append([vote.voter, vote.decision, vote.comments, step.now])
    config = _config(state, vote.approval_id)
    approving = [v[0] for v in votes if v[1] == "approve"]
    rejecting = [v[0] for v in votes if v[1] != "approve"]
    quorum, reject_quorum = int(config.get("quorum", 1)), int(config.get("reject_quorum", 1))
    if len(approving) >= quorum:
        decision, deciders, needed = "approve", approving, quorum
    elif len(rejecting) >= reject_quorum:
        decision, deciders, needed = "reject", rejecting, reject_quorum
    else:
        return
    comments = f"{len(deciders)} of {needed} needed to {decision}: {', '.join(deciders)}"
    recorded = [{"voter": v, "decision": d, "comments": c, "at": at} for v, d, c, at in votes]
    step.emit(
        ApprovalDecided(
            state.run_id, vote.approval_id, decision, QUORUM_DECIDER, comments, votes=recorded
        )
    )


# --- escalation ------------------------------------------------------------------------


def escalate(step: Step, approval_id: str) -> bool:
    """At a deadline: re-request the approval from the next escalation group, if the
    node has one left (True), else leave it to the timeout outcome (False)."""
    state = step.state
    levels = _config(state, approval_id).get("escalation") or []
    level = level_of(state, approval_id)
    if not isinstance(levels, list) or level >= len(levels):
        return False
    group = levels[level] if isinstance(levels[level], dict) else {}
    timeout_ms = group.get("timeout_ms")
    # The deadline runs from this firing, on the clock of the timer service that fired it.
    deadline = None if timeout_ms is None else step.now + int(timeout_ms)
    approvers = _deciders(_config(state, approval_id), levels[: level + 1])
    step.emit(ApprovalEscalated(state.run_id, approval_id, level + 1, approvers, deadline))
    return True


def on_escalated(step: Step, event: ApprovalEscalated) -> None:
    """Apply an escalation: the new level, and its deadline's timer."""
    state = step.state
    node_id = state.pending_approvals.get(event.approval_id)
    if node_id is None:
        return
    _hitl(state, "levels")[event.approval_id] = event.level
    node = state.nodes[node_id]
    if event.deadline is not None:
        timer_id = approval_timer_id(state.run_id, event.approval_id, event.level)
        step.emit(
            TimerSet(
                state.run_id,
                timer_id,
                event.deadline,
                APPROVAL_TIMER,
                node_id,
                node.iteration,
                node.attempt,
            )
        )


def _deciders(config: dict[str, Any], groups: list[Any]) -> list[str]:
    """Everyone who may decide once `groups` were asked too: names, then roles."""
    names: dict[str, None] = {}
    roles: dict[str, None] = {}
    for group in [config, *groups]:
        if isinstance(group, dict):
            names.update(dict.fromkeys(str(n) for n in group.get("approvers", [])))
            roles.update(dict.fromkeys(ROLE_PREFIX + str(r) for r in group.get("roles", [])))
    return [*names, *roles]


# --- signals -------------------------------------------------------------------------


def on_signal(step: Step, signal: SignalReceived) -> None:
    """Keep the signal on the run, and end the waits for it."""
    state = step.state
    signals: list[list[Any]] = _hitl(state, "signals")
    if len(signals) >= MAX_SIGNALS_PER_RUN:
        return
    signals.append(
        [step.cause.event_id, signal.name, signal.payload, signal.sent_by, step.cause.occurred_at]
    )
    for approval_id in list(state.pending_approvals):
        if signal.name in _awaited(state, approval_id):
            _end_wait(step, approval_id)


def on_requested(step: Step, request: ApprovalRequested) -> None:
    """The lookback: a signal the run got before the wait began ends it at once."""
    if request.approval_id in step.state.pending_approvals and _awaited(
        step.state, request.approval_id
    ):
        _end_wait(step, request.approval_id)


def _awaited(state: RunState, approval_id: str) -> list[str]:
    node = state.nodes.get(state.pending_approvals[approval_id])
    if node is None or node.status not in OUTSTANDING:
        return []
    signals = _config(state, approval_id).get("signals") or []
    return [str(s) for s in signals] if isinstance(signals, list) else []


def _end_wait(step: Step, approval_id: str) -> None:
    """Decide `approval_id` with the oldest signal its node awaits and has not used."""
    state = step.state
    node_id = state.pending_approvals[approval_id]
    awaited = set(_awaited(state, approval_id))
    used: list[str] = _hitl(state, "used").setdefault(node_id, [])
    for event_id, name, payload, sent_by, at in _hitl(state, "signals"):
        if name in awaited and event_id not in used:
            used.append(event_id)
            signal = {
                "name": name,
                "payload": payload,
                "sent_by": sent_by,
                "sent_at": at,
                "event_id": event_id,
            }
            step.emit(
                ApprovalDecided(
                    state.run_id,
                    approval_id,
                    "approve",
                    SIGNAL_DECIDER_PREFIX + name,
                    f"signal {name!r} sent by {sent_by or 'unknown'}",
                    signal=signal,
                )
            )
            return
