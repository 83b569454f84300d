"""The coordinator's patch review: agent patches of a `patch_policy: review` workflow wait."""

from __future__ import annotations

from typing import Any

from aob.events.types import (
    PatchApplied,
    PatchProposed,
    PatchRejected,
    PatchReviewed,
    PatchReviewRequested,
    RunCompleted,
)
from aob.projections.coordinator.state import NodeStatus, RunStatus
from tests.coordinator.simulate import HANG, Simulation, complete


def node(node_id: str, node_type: str = "work", **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": node_type, **extra}


def workflow(*, policy: str | None = "review") -> dict[str, Any]:
    definition: dict[str, Any] = {
        "name": "reviewed",
        "nodes": [node("a"), node("b")],
        "edges": [{"from": "a", "to": "b"}],
    }
    if policy is not None:
        definition["patch_policy"] = policy
    return definition


ADD_X = [
    {"op": "add", "path": "/nodes/-", "value": node("x")},
    {"op": "add", "path": "/edges/-", "value": {"from": "a", "to": "x"}},
]


def started(policy: str | None = "review") -> Simulation:
    """a has completed; b is scheduled (and never answers)."""
    sim = Simulation(workflow(policy=policy), script={"b": HANG})
    sim.run_until(lambda s: s.runs_of("b") == [(0, 1)])
    return sim


def test_agent_patch_under_review_waits_and_applies_once_approved():
    sim = started()
    sim.append(PatchProposed(sim.run_id, "p1", ADD_X, "more work", node_id="b"))
    assert sim.payloads(PatchReviewRequested) == [PatchReviewRequested(sim.run_id, "p1")]
    assert sim.payloads(PatchApplied) == []
    assert "x" not in sim.current.nodes
    sim.append(PatchReviewed(sim.run_id, "p1", "approve", "carol"))
    assert sim.payloads(PatchApplied) == [PatchApplied(sim.run_id, "p1", 1, ["x"])]
    assert sim.runs_of("x") == [(0, 1)]


def test_run_waits_for_a_pending_review_before_completing():
    sim = Simulation(workflow(), script={"b": complete(duration_ms=100)})
    sim.run_until(lambda s: s.current.nodes["b"].status is NodeStatus.RUNNING)
    sim.append(PatchProposed(sim.run_id, "p1", ADD_X, node_id="b"))
    sim.run()
    assert sim.current.nodes["b"].status is NodeStatus.COMPLETED
    assert sim.current.status is RunStatus.RUNNING  # nothing outstanding, but a review is
    sim.append(PatchReviewed(sim.run_id, "p1", "approve", "carol"))
    sim.run()
    assert sim.runs_of("x") == [(0, 1)]
    assert isinstance(sim.terminal(), RunCompleted)


def test_rejected_review_rejects_the_patch_and_lets_the_run_complete():
    sim = Simulation(workflow(), script={"b": complete(duration_ms=100)})
    sim.run_until(lambda s: s.current.nodes["b"].status is NodeStatus.RUNNING)
    sim.append(PatchProposed(sim.run_id, "p1", ADD_X, node_id="b"))
    sim.run()
    sim.append(PatchReviewed(sim.run_id, "p1", "reject", "carol", "not needed"))
    assert sim.payloads(PatchRejected) == [
        PatchRejected(sim.run_id, "p1", ["rejected in review by carol: not needed"])
    ]
    assert sim.terminal() == RunCompleted(
        sim.run_id, {"b": {"node": "b", "iteration": 0, "attempt": 1}}
    )
    assert "x" not in sim.current.nodes


def test_approved_patch_that_no_longer_applies_is_rejected():
    sim = started()
    ops = [
        {"op": "add", "path": "/nodes/-", "value": node("x")},
        {"op": "add", "path": "/edges/-", "value": {"from": "x", "to": "c"}},
        {"op": "add", "path": "/nodes/-", "value": node("c")},
    ]
    sim.append(PatchProposed(sim.run_id, "p1", ops, node_id="b"))
    # Meanwhile a person adds a node c directly: the agent's patch now duplicates it.
    sim.append(
        PatchProposed(
            sim.run_id, "p2", [{"op": "add", "path": "/nodes/-", "value": node("c", "work")}]
        )
    )
    assert [p.patch_id for p in sim.payloads(PatchApplied)] == ["p2"]
    sim.append(PatchReviewed(sim.run_id, "p1", "approve", "carol"))
    (rejected,) = sim.payloads(PatchRejected)
    assert rejected.patch_id == "p1"
    assert any("duplicate node id 'c'" in reason for reason in rejected.reasons)


def test_invalid_agent_patch_is_rejected_at_once_even_under_review():
    sim = started()
    sim.append(PatchProposed(sim.run_id, "p1", [{"op": "remove", "path": "/nodes/0"}], node_id="b"))
    assert sim.payloads(PatchReviewRequested) == []
    (rejected,) = sim.payloads(PatchRejected)
    assert any("frozen node" in reason for reason in rejected.reasons)


def test_auto_policy_and_patches_from_people_apply_at_once():
    auto = started(policy=None)
    auto.append(PatchProposed(auto.run_id, "p1", ADD_X, node_id="b"))
    assert [p.patch_id for p in auto.payloads(PatchApplied)] == ["p1"]
    review = started()
    review.append(PatchProposed(review.run_id, "p1", ADD_X))  # a person, through the API
    assert [p.patch_id for p in review.payloads(PatchApplied)] == ["p1"]
    assert review.payloads(PatchReviewRequested) == []


def test_reviews_of_unknown_or_decided_patches_change_nothing():
    sim = started()
    sim.append(PatchReviewed(sim.run_id, "nope", "approve", "carol"))
    sim.append(PatchProposed(sim.run_id, "p1", ADD_X, node_id="b"))
    sim.append(PatchReviewed(sim.run_id, "p1", "approve", "carol"))
    sim.append(PatchReviewed(sim.run_id, "p1", "reject", "dave"))
    assert [p.patch_id for p in sim.payloads(PatchApplied)] == ["p1"]
    assert sim.payloads(PatchRejected) == []


def test_a_patch_cannot_lift_the_review_policy():
    sim = started()
    sim.append(
        PatchProposed(
            sim.run_id, "p0", [{"op": "replace", "path": "/patch_policy", "value": "auto"}]
        )
    )  # a person may edit it
    sim.append(PatchProposed(sim.run_id, "p1", ADD_X, node_id="b"))
    assert sim.payloads(PatchReviewRequested) == [PatchReviewRequested(sim.run_id, "p1")]
