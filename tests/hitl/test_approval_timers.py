"""Approval deadlines are timer events, like node timeouts: the fold sets a timer when an
approval with a deadline is requested, and its firing decides the approval as the node's
on_timeout says, unless someone decided it first. The hitl service watches no deadline."""

from __future__ import annotations

from pathlib import Path

from aob.events.types import ApprovalDecided, ApprovalRequested, NodeStarted, TimerFired, TimerSet
from aob.projections.coordinator.fold import APPROVAL_TIMER, approval_timer_id
from aob.workers.hitl import HitlService
from tests.coordinator.simulate import HANG, Simulation
from tests.hitl.harness import review, running_aob

GATE = {
    "name": "gate",
    "nodes": [{"id": "gate", "type": "hitl", "config": {"on_timeout": "approve"}}],
}


def _asked(deadline: int | None) -> Simulation:
    simulation = Simulation(GATE, script={"gate": HANG}).start()
    simulation.run_until(lambda s: bool(s.payloads(NodeStarted)))
    simulation.append(ApprovalRequested("run-1", "a1", "gate", 0, "ok?", deadline=deadline))
    return simulation


def test_a_requested_deadline_sets_a_timer() -> None:
    simulation = _asked(deadline=5_000)
    [timer] = [t for t in simulation.payloads(TimerSet) if t.purpose == APPROVAL_TIMER]
    assert (timer.timer_id, timer.fire_at) == (approval_timer_id("run-1", "a1"), 5_000)
    assert not [t for t in _asked(None).payloads(TimerSet) if t.purpose == APPROVAL_TIMER]


def test_the_timer_decides_a_pending_approval_as_on_timeout_says() -> None:
    simulation = _asked(deadline=5_000)
    fired = simulation.append(TimerFired("run-1", approval_timer_id("run-1", "a1")))
    [decided] = simulation.entries(ApprovalDecided)
    event, decision = decided
    assert (decision.approval_id, decision.decision) == ("a1", "approve")
    assert decision.decided_by == "system:timeout"
    assert event.causation_id == fired.event_id  # derived: the same on every replay
    assert simulation.current.pending_approvals == {}


def test_a_decision_before_the_deadline_stands() -> None:
    simulation = _asked(deadline=5_000)
    simulation.append(ApprovalDecided("run-1", "a1", "reject", "alice"))
    assert approval_timer_id("run-1", "a1") not in simulation.current.timers
    simulation.append(TimerFired("run-1", approval_timer_id("run-1", "a1")))
    assert [d.decided_by for d in simulation.payloads(ApprovalDecided)] == ["alice"]


def test_the_hitl_service_has_no_deadline_loop() -> None:
    assert not hasattr(HitlService, "fire_overdue")


async def test_a_deadline_is_decided_through_timer_events(tmp_path: Path) -> None:
    """End to end on the embedded engine: TimerSet, TimerFired, then the decision by
    system:timeout caused by the timer's firing, and the run follows on_timeout."""
    async with running_aob(tmp_path / "data") as aob:
        run_id = await aob.submit(review({"timeout_ms": 300, "on_timeout": "approve"}))
        run = await aob.finished(run_id)
        events = await aob.events(run_id)
    assert run["status"] == "completed"
    assert run["output"]["publish"] == "published"
    [timer] = [
        e for e in events if e["type"] == "TimerSet" and e["data"]["purpose"] == APPROVAL_TIMER
    ]
    [fired] = [
        e
        for e in events
        if e["type"] == "TimerFired" and e["data"]["timer_id"] == timer["data"]["timer_id"]
    ]
    [decided] = [e for e in events if e["type"] == "ApprovalDecided"]
    assert decided["data"]["decided_by"] == "system:timeout"
    assert decided["causation_id"] == fired["event_id"]
