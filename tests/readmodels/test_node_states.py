"""Node states that agree with their run's, on every engine: a hitl node waits while its
approval is pending; nodes unfinished when their run ends are cancelled; a replayed run
lists the nodes it carried over."""

from __future__ import annotations

from typing import Any

from aob.events.types import (
    ApprovalDecided,
    ApprovalRequested,
    Event,
    NodeCompleted,
    NodeScheduled,
    NodeStarted,
    RunCancelled,
    RunCompleted,
    RunSubmitted,
)
from tests.readmodels.conftest import Script

GATED: dict[str, Any] = {
    "name": "gated",
    "nodes": [
        {"id": "prepare", "type": "noop"},
        {"id": "gate", "type": "hitl"},
        {"id": "ship", "type": "noop"},
    ],
    "edges": [{"from": "prepare", "to": "gate"}, {"from": "gate", "to": "ship"}],
}


def _nodes(store: Any, run_id: str) -> dict[str, dict[str, Any]]:
    run = store.get_run(run_id)
    assert run is not None
    return {n["node_id"]: n for n in run["nodes"]}


def _gate_waiting(s: Script, run_id: str) -> None:
    """`run_id` up to its hitl node waiting for approval `a-<run_id>`."""
    s.add(run_id, 1_000, RunSubmitted(run_id, GATED, {}, ["noop", "hitl"]))
    task = s.add(run_id, 1_001, NodeScheduled(run_id, "gate", "hitl", 0, 1, {}, {}, 60_000))
    s.add(run_id, 1_002, NodeStarted(run_id, "gate", 0, 1, "hitl"))
    request = ApprovalRequested(run_id, f"a-{run_id}", "gate", 0, "Ship it?")
    # The hitl service names the task it answers: that is where the attempt comes from.
    s.append(Event(f"ask-{run_id}", run_id, 1_003, request, causation_id=task.event_id))
    s.mark("waiting")


def test_a_hitl_node_waits_while_its_approval_is_pending(store: Any) -> None:
    s = Script()
    _gate_waiting(s, "r1")
    store.apply(s.until("waiting"))
    assert store.get_run("r1")["status"] == "waiting"
    assert _nodes(store, "r1")["gate"]["status"] == "waiting"

    s.add("r1", 2_000, ApprovalDecided("r1", "a-r1", "approve", "bob"))
    s.mark("decided")
    store.apply(s.until("decided"))
    assert store.get_run("r1")["status"] == "running"
    assert _nodes(store, "r1")["gate"]["status"] == "running"

    s.add("r1", 2_001, NodeCompleted("r1", "gate", 0, 1, {"approved": True}))
    s.mark("completed")
    store.apply(s.until("completed"))
    assert _nodes(store, "r1")["gate"]["status"] == "completed"


def test_nodes_unfinished_when_the_run_is_cancelled_are_cancelled(store: Any) -> None:
    s = Script()
    _gate_waiting(s, "r2")
    s.add("r2", 1_010, NodeScheduled("r2", "prepare", "noop", 0, 1, {}, {}, 60_000))
    s.add("r2", 1_020, RunCancelled("r2", "not today"))
    # A late answer of the worker changes nothing, as in the coordinator.
    s.add("r2", 1_030, NodeCompleted("r2", "prepare", 0, 1, "late"))
    s.mark("cancelled")
    store.apply(s.items)
    nodes = _nodes(store, "r2")
    assert store.get_run("r2")["status"] == "cancelled"
    assert {nodes["gate"]["status"], nodes["prepare"]["status"]} == {"cancelled"}
    assert nodes["gate"]["finished_at"] == 1_020
    assert nodes["prepare"]["output"] is None


def test_a_replayed_run_lists_the_nodes_it_carried_over(store: Any) -> None:
    s = Script()
    checkpoint = {"run_id": "r-old", "from_event": 7, "outputs": {"prepare": {"n": 1}}}
    s.add("r3", 3_000, RunSubmitted("r3", GATED, {}, ["noop", "hitl"], checkpoint=checkpoint))
    s.add("r3", 3_001, NodeScheduled("r3", "gate", "hitl", 0, 1, {}, {}, 60_000))
    s.add("r3", 3_002, NodeCompleted("r3", "gate", 0, 1, True))
    s.add("r3", 3_003, NodeScheduled("r3", "ship", "noop", 0, 1, {}, {}, 60_000))
    s.add("r3", 3_004, NodeCompleted("r3", "ship", 0, 1, None))
    s.add("r3", 3_005, RunCompleted("r3", None))
    store.apply(s.items)
    run = store.get_run("r3")
    assert [n["node_id"] for n in run["nodes"]] == ["prepare", "gate", "ship"]
    prepare = run["nodes"][0]
    assert (prepare["status"], prepare["output"], prepare["carried_from"]) == (
        "completed",
        {"n": 1},
        "r-old",
    )
    assert prepare["type"] == "noop"
    assert [n["carried_from"] for n in run["nodes"][1:]] == [None, None]
