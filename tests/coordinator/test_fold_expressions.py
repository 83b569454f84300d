"""Tenant expressions are decided outside the fold and recorded in the log.

The fold asks (`ExpressionRequested`) and routes only on the recorded verdict
(`ExpressionEvaluated`), so replaying a log reaches the same decisions whatever an
evaluation cost, and a budget that ran out fails the run with its reason.
"""

from __future__ import annotations

from typing import Any

from aob.events.types import (
    Event,
    ExpressionEvaluated,
    ExpressionRequested,
    NodeCompleted,
    NodeScheduled,
    NodeSkipped,
    PatchProposed,
    PatchRejected,
    RunCompleted,
    RunFailed,
    RunSubmitted,
)
from aob.projections.coordinator.fold import fold, replay
from aob.projections.coordinator.state import RunState, RunStatus
from tests.coordinator.simulate import HANG, Simulation, canonical, evaluated

RUN = "run-1"
BUDGET = "jq CPU budget exceeded (250 ms, AOB_JQ_CPU_MS)"


def flow(*edges: dict[str, Any], output: str | None = None, **nodes: str) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "name": "flow",
        "nodes": [{"id": n, "type": t} for n, t in nodes.items()],
        "edges": list(edges),
    }
    if output is not None:
        definition["output"] = output
    return definition


class Log:
    """A hand-driven log: events go in one at a time, the fold's output comes back."""

    def __init__(self, definition: dict[str, Any]) -> None:
        self.events: list[Event] = []
        self.state: RunState | None = None
        self.emitted: list[Event] = []
        self.add(RunSubmitted(RUN, definition, {}, ["work"]))

    def add(self, payload: Any, event_id: str | None = None) -> list[Event]:
        event = Event(event_id or f"e{len(self.events)}", RUN, len(self.events), payload)
        self.events.append(event)
        self.state, emitted = fold(self.state, event)
        self.events.extend(emitted)
        for out in emitted:  # the fold applied them already: folding again is a no-op
            self.state, again = fold(self.state, out)
            assert again == []
        self.emitted.extend(emitted)
        return emitted

    def requests(self) -> list[ExpressionRequested]:
        return [e.payload for e in self.emitted if isinstance(e.payload, ExpressionRequested)]

    def scheduled(self) -> list[str]:
        return [e.payload.node_id for e in self.emitted if isinstance(e.payload, NodeScheduled)]


def test_a_condition_is_asked_for_and_nothing_routes_until_its_verdict_arrives() -> None:
    log = Log(flow({"from": "a", "to": "b", "when": ".nodes.a > 1"}, a="work", b="work"))
    log.add(NodeCompleted(RUN, "a", 0, 1, 5))
    (request,) = log.requests()
    assert (request.purpose, request.source, request.target) == ("edge", "a", "b")
    assert request.program == ".nodes.a > 1"
    assert request.input["nodes"] == {"a": 5}
    assert log.scheduled() == ["a"]  # b waits for the verdict
    assert log.state is not None
    assert log.state.status is RunStatus.RUNNING  # and the run cannot complete meanwhile

    log.add(ExpressionEvaluated(RUN, request.request_id, True))
    assert log.scheduled() == ["a", "b"]


def test_a_false_verdict_skips_the_target_and_the_run_completes() -> None:
    log = Log(flow({"from": "a", "to": "b", "when": "false"}, a="work", b="work"))
    log.add(NodeCompleted(RUN, "a", 0, 1, 1))
    log.add(ExpressionEvaluated(RUN, log.requests()[0].request_id, False))
    kinds = [type(e.payload) for e in log.emitted]
    assert NodeSkipped in kinds
    assert isinstance(log.emitted[-1].payload, RunCompleted)


def test_a_budget_that_ran_out_fails_the_run_naming_the_edge_and_the_budget() -> None:
    log = Log(flow({"from": "a", "to": "b", "when": "def f: f; f"}, a="work", b="work"))
    log.add(NodeCompleted(RUN, "a", 0, 1, 1))
    log.add(ExpressionEvaluated(RUN, log.requests()[0].request_id, error=BUDGET))
    failed = log.emitted[-1].payload
    assert isinstance(failed, RunFailed)
    assert failed.error == f"condition on edge a->b failed: {BUDGET}"


def test_the_output_expression_is_evaluated_outside_and_its_value_ends_the_run() -> None:
    log = Log(flow(output="[range(1e10)]", a="work"))
    log.add(NodeCompleted(RUN, "a", 0, 1, 1))
    (request,) = log.requests()
    assert request.purpose == "output"
    log.add(ExpressionEvaluated(RUN, request.request_id, error=BUDGET))
    failed = log.emitted[-1].payload
    assert isinstance(failed, RunFailed)
    assert failed.error == f"run output expression failed: {BUDGET}"


def test_a_large_output_ends_the_run_by_reference() -> None:
    log = Log(flow(output=".nodes.a", a="work"))
    log.add(NodeCompleted(RUN, "a", 0, 1, None, output_ref="sha256:" + "a" * 64))
    request = log.requests()[0]
    assert request.output_refs == {"a": "sha256:" + "a" * 64}
    log.add(ExpressionEvaluated(RUN, request.request_id, None, "sha256:" + "b" * 64))
    completed = log.emitted[-1].payload
    assert completed == RunCompleted(RUN, None, "sha256:" + "b" * 64)


def test_sink_outputs_held_in_the_blob_store_are_assembled_by_the_evaluator() -> None:
    log = Log(flow(a="work", b="work"))
    log.add(NodeCompleted(RUN, "a", 0, 1, 1))
    log.add(NodeCompleted(RUN, "b", 0, 1, None, output_ref="sha256:" + "c" * 64))
    (request,) = log.requests()
    assert request.purpose == "output"
    assert evaluated(ExpressionRequested(**{**_fields(request), "input": _resolved(request)})) == (
        ExpressionEvaluated(RUN, request.request_id, {"a": 1, "b": "big"})
    )


def test_downstream_tasks_reference_large_outputs_instead_of_copying_them() -> None:
    log = Log(flow({"from": "a", "to": "b"}, a="work", b="work"))
    log.add(NodeCompleted(RUN, "a", 0, 1, None, output_ref="sha256:" + "d" * 64))
    task = log.emitted[-1].payload
    assert isinstance(task, NodeScheduled)
    assert task.input["nodes"] == {"a": None}
    assert task.output_refs == {"a": "sha256:" + "d" * 64}


def test_a_stale_or_duplicated_verdict_changes_nothing() -> None:
    log = Log(flow({"from": "a", "to": "b", "when": "true"}, a="work", b="work"))
    log.add(NodeCompleted(RUN, "a", 0, 1, 1))
    request_id = log.requests()[0].request_id
    log.add(ExpressionEvaluated(RUN, request_id, True))
    assert log.add(ExpressionEvaluated(RUN, request_id, False)) == []  # redelivered, new id
    assert log.add(ExpressionEvaluated(RUN, "edge:x->y:0:00", True)) == []  # never asked


def test_replaying_the_log_reaches_the_same_state_without_evaluating_anything() -> None:
    sim = Simulation(
        flow(
            {"from": "a", "to": "b", "when": '.nodes.a.node == "a"'},
            {"from": "a", "to": "c", "when": "false"},
            {"from": "b", "to": "d"},
            {"from": "c", "to": "d"},
            output="{b: .nodes.b.node}",
            a="work",
            b="work",
            c="work",
            d="work",
        )
    )
    state = sim.run()
    assert state.status is RunStatus.COMPLETED
    assert sim.terminal() == RunCompleted(RUN, {"b": "b"})
    assert len(sim.payloads(ExpressionEvaluated)) == 3
    # The evaluator's answers are in the log: a replay needs no evaluation at all.
    assert canonical(replay(sim.log)) == canonical(state)


def test_only_the_current_attempt_of_an_agent_may_patch_the_run() -> None:
    add_node = [{"op": "add", "path": "/nodes/-", "value": {"id": "x", "type": "work"}}]
    sim = Simulation(
        flow(planner="work", other="work"),
        script={"planner": [HANG, HANG]},
    )
    sim.run_until(lambda s: ("planner", 0, 1) in s.scheduled())
    stale = PatchProposed(RUN, "p-old", add_node, node_id="planner", iteration=0, attempt=2)
    sim.append(stale)  # attempt 2 never ran
    (rejected,) = sim.payloads(PatchRejected)
    assert "only the current attempt may patch the run" in rejected.reasons[0]
    current = PatchProposed(RUN, "p-now", add_node, node_id="planner", iteration=0, attempt=1)
    sim.append(current)
    assert "x" in sim.current.nodes


def _fields(request: ExpressionRequested) -> dict[str, Any]:
    return {name: getattr(request, name) for name in request.__slots__}


def _resolved(request: ExpressionRequested) -> dict[str, Any]:
    """The request's context with its referenced outputs fetched (here: "big")."""
    nodes = {**request.input["nodes"], **dict.fromkeys(request.output_refs, "big")}
    return {**request.input, "nodes": nodes}
