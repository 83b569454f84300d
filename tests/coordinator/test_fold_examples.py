"""The coordinator fold, one semantic per test, driven by the simulated world."""

from __future__ import annotations

from typing import Any

import pytest

from aob.events.types import (
    ApprovalDecided,
    ApprovalRequested,
    Event,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    PatchApplied,
    PatchProposed,
    PatchRejected,
    Payload,
    RunCancelled,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    RunSubmitted,
    TimerFired,
    TimerSet,
)
from aob.projections.coordinator.fold import fold, replay
from aob.projections.coordinator.state import NodeStatus, RunStatus
from tests.coordinator.simulate import (
    HANG,
    Simulation,
    canonical,
    complete,
    fail,
    fatal,
)


def node(node_id: str, node_type: str = "work", **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": node_type, **extra}


def edge(source: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"from": source, "to": target, **extra}


def workflow(*nodes: dict[str, Any], edges: Any = (), **extra: Any) -> dict[str, Any]:
    return {"name": "example", "nodes": list(nodes), "edges": list(edges), **extra}


def echo(node_id: str, iteration: int = 0, attempt: int = 1) -> dict[str, Any]:
    return {"node": node_id, "iteration": iteration, "attempt": attempt}


def position(sim: Simulation, predicate: Any) -> int:
    """Index in the log of the first event whose payload satisfies `predicate`."""
    return next(i for i, e in enumerate(sim.log) if predicate(e.payload))


def scheduled_at(sim: Simulation, node_id: str, iteration: int = 0, attempt: int = 1) -> int:
    return position(
        sim,
        lambda p: (
            isinstance(p, NodeScheduled)
            and (p.node_id, p.iteration, p.attempt) == (node_id, iteration, attempt)
        ),
    )


def completed_at(sim: Simulation, node_id: str, iteration: int = 0) -> int:
    return position(
        sim,
        lambda p: isinstance(p, NodeCompleted) and (p.node_id, p.iteration) == (node_id, iteration),
    )


def skipped(sim: Simulation) -> dict[str, NodeSkipped]:
    return {p.node_id: p for p in sim.payloads(NodeSkipped)}


def fold_quietly(sim: Simulation, event: Event) -> list[Event]:
    """Fold one event into the simulation's state; what it emitted."""
    sim.log.append(event)
    sim.state, emitted = fold(sim.state, event)
    return emitted


# --- routing ---------------------------------------------------------------------------


def test_linear_chain_runs_each_node_once_in_order_and_completes_with_the_sink_output():
    sim = Simulation(
        workflow(node("a"), node("b"), node("c"), edges=[edge("a", "b"), edge("b", "c")])
    )
    state = sim.run()
    assert sim.scheduled() == [("a", 0, 1), ("b", 0, 1), ("c", 0, 1)]
    assert state.status is RunStatus.COMPLETED
    assert sim.terminal() == RunCompleted(sim.run_id, {"c": echo("c")})
    task_b = sim.payloads(NodeScheduled)[1]
    assert task_b.input == {"inputs": None, "nodes": {"a": echo("a")}, "iteration": 0}
    assert state.outstanding == 0


def test_fan_out_and_join_waits_for_every_branch():
    sim = Simulation(
        workflow(
            node("a"),
            node("b"),
            node("c"),
            node("d"),
            edges=[edge("a", "b"), edge("a", "c"), edge("b", "d"), edge("c", "d")],
        ),
        script={"b": complete(duration_ms=100)},
    )
    sim.run()
    assert sorted(sim.scheduled()) == [("a", 0, 1), ("b", 0, 1), ("c", 0, 1), ("d", 0, 1)]
    assert completed_at(sim, "c") < completed_at(sim, "b") < scheduled_at(sim, "d")
    assert sim.payloads(NodeScheduled)[-1].input["nodes"].keys() == {"a", "b", "c"}
    assert isinstance(sim.terminal(), RunCompleted)


def test_join_any_runs_once_on_the_first_branch():
    sim = Simulation(
        workflow(
            node("a"),
            node("b"),
            node("c"),
            node("d", join="any"),
            edges=[edge("a", "b"), edge("a", "c"), edge("b", "d"), edge("c", "d")],
        ),
        script={"b": complete(duration_ms=100)},
    )
    sim.run()
    assert sim.runs_of("d") == [(0, 1)]
    assert completed_at(sim, "c") < scheduled_at(sim, "d") < completed_at(sim, "b")
    assert isinstance(sim.terminal(), RunCompleted)


@pytest.mark.parametrize(("go", "runs", "dead"), [(True, "yes", "no"), (False, "no", "yes")])
def test_conditional_edges_take_the_true_branch_and_skip_the_false_one(go, runs, dead):
    sim = Simulation(
        workflow(
            node("a"),
            node("yes"),
            node("no"),
            edges=[edge("a", "yes", when=".nodes.a.go"), edge("a", "no", when=".nodes.a.go | not")],
        ),
        script={"a": complete({"go": go})},
    )
    state = sim.run()
    assert sim.runs_of(runs) == [(0, 1)]
    assert sim.runs_of(dead) == []
    assert skipped(sim)[dead].reason == "no incoming edge was taken"
    assert not skipped(sim)[dead].warning
    assert state.nodes[dead].status is NodeStatus.SKIPPED
    assert isinstance(sim.terminal(), RunCompleted)


def test_dead_path_propagates_through_a_chain_so_the_join_still_runs():
    sim = Simulation(
        workflow(
            node("a"),
            node("b"),
            node("c"),
            node("d"),
            edges=[edge("a", "b", when="false"), edge("b", "c"), edge("c", "d"), edge("a", "d")],
        )
    )
    state = sim.run()
    assert set(skipped(sim)) == {"b", "c"}
    assert sim.runs_of("d") == [(0, 1)]
    assert state.edge_taken == {
        ("a", "b"): False,
        ("a", "d"): True,
        ("b", "c"): False,
        ("c", "d"): False,
    }
    assert isinstance(sim.terminal(), RunCompleted)


def test_diamond_with_one_branch_skipped_joins_once():
    sim = Simulation(
        workflow(
            node("a"),
            node("left"),
            node("right"),
            node("d"),
            edges=[
                edge("a", "left", when='.nodes.a.side == "left"'),
                edge("a", "right", when='.nodes.a.side == "right"'),
                edge("left", "d"),
                edge("right", "d"),
            ],
        ),
        script={"a": complete({"side": "right"})},
    )
    sim.run()
    assert set(skipped(sim)) == {"left"}
    assert sim.runs_of("d") == [(0, 1)]
    assert sim.terminal() == RunCompleted(sim.run_id, {"d": echo("d")})


def test_join_whose_every_input_is_dead_is_skipped_and_the_run_completes():
    sim = Simulation(
        workflow(
            node("a"),
            node("b"),
            node("c"),
            node("d"),
            edges=[
                edge("a", "b", when="false"),
                edge("a", "c", when="false"),
                edge("b", "d"),
                edge("c", "d"),
            ],
        )
    )
    sim.run()
    assert set(skipped(sim)) == {"b", "c", "d"}
    assert sim.terminal() == RunCompleted(sim.run_id, {})


def test_a_condition_that_breaks_fails_the_run_naming_the_edge():
    sim = Simulation(
        workflow(node("a"), node("b"), edges=[edge("a", "b", when='.nodes.a.n + "x"')]),
        script={"a": complete({"n": 1})},
    )
    sim.run()
    end = sim.terminal()
    assert isinstance(end, RunFailed)
    assert "condition on edge a->b failed" in end.error
    assert end.node_id == "a"
    assert sim.runs_of("b") == []


# --- loops -------------------------------------------------------------------------------


def test_unconditional_loop_runs_its_body_exactly_bound_plus_one_times():
    sim = Simulation(
        workflow(
            node("start"),
            node("b"),
            node("c"),
            node("done"),
            edges=[
                edge("start", "b"),
                edge("b", "c"),
                edge("c", "b", loop={"max_iterations": 3}),
                edge("c", "done"),
            ],
        )
    )
    state = sim.run()
    assert sim.runs_of("b") == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert sim.runs_of("c") == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert sim.runs_of("start") == sim.runs_of("done") == [(0, 1)]
    assert scheduled_at(sim, "done") > completed_at(sim, "c", 3)
    assert state.outputs["c"] == echo("c", 3)
    assert isinstance(sim.terminal(), RunCompleted)


def test_conditional_loop_stops_when_its_condition_turns_false():
    def countdown(task: NodeScheduled):
        return complete({"left": 2 - task.iteration})

    sim = Simulation(
        workflow(
            node("tick"),
            node("done"),
            edges=[
                edge("tick", "tick", when=".nodes.tick.left > 0", loop={"max_iterations": 10}),
                edge("tick", "done"),
            ],
            output=".nodes.tick.left",
        ),
        script=countdown,
    )
    sim.run()
    assert sim.runs_of("tick") == [(0, 1), (1, 1), (2, 1)]
    assert sim.terminal() == RunCompleted(sim.run_id, 0)


def test_loop_condition_sees_the_iteration_of_the_node_that_finished():
    sim = Simulation(
        workflow(
            node("tick"),
            edges=[edge("tick", "tick", when=".iteration < 2", loop={"max_iterations": 10})],
        )
    )
    sim.run()
    assert sim.runs_of("tick") == [(0, 1), (1, 1), (2, 1)]


def test_result_of_an_older_iteration_is_ignored():
    sim = Simulation(
        workflow(
            node("b"),
            node("c"),
            edges=[edge("b", "c"), edge("c", "b", loop={"max_iterations": 1})],
        ),
        script={"b": complete(duration_ms=100)},
    )
    sim.run_until(lambda s: s.runs_of("b") == [(0, 1), (1, 1)])
    before = canonical(sim.state)
    stale = Event("stale-1", sim.run_id, sim.now, NodeCompleted(sim.run_id, "b", 0, 1, "old"))
    assert fold_quietly(sim, stale) == []
    sim.current.seen.discard("stale-1")
    assert canonical(sim.state) == before
    sim.run()
    assert sim.runs_of("c") == [(0, 1), (1, 1)]
    assert isinstance(sim.terminal(), RunCompleted)


def test_a_body_node_still_running_when_the_loop_restarts_is_abandoned():
    # `c` joins any: it runs (and loops) while `slow` is still busy.
    sim = Simulation(
        workflow(
            node("b"),
            node("slow"),
            node("c", join="any"),
            edges=[
                edge("b", "slow"),
                edge("b", "c"),
                edge("slow", "c"),
                edge("c", "b", loop={"max_iterations": 1}),
            ],
        ),
        script={"slow": complete(duration_ms=1000)},
    )
    state = sim.run()
    assert sim.runs_of("b") == [(0, 1), (1, 1)]
    assert sim.runs_of("slow") == [(0, 1), (1, 1)]
    assert state.outputs["slow"] == echo("slow", 1)
    assert isinstance(sim.terminal(), RunCompleted)


# --- retries and timeouts -------------------------------------------------------------------

RETRY = {"max_attempts": 3, "initial_backoff_ms": 100, "multiplier": 2}


def test_retry_waits_for_its_backoff_timer_before_the_next_attempt():
    sim = Simulation(
        workflow(node("a", retry=RETRY)),
        script={"a": [fail(duration_ms=5), fail(duration_ms=5), complete("ok")]},
    )
    sim.run()
    assert sim.runs_of("a") == [(0, 1), (0, 2), (0, 3)]
    failures = [event for event, _ in sim.entries(NodeFailed)]
    timers = sim.entries(TimerSet)
    assert [timer.fire_at for _, timer in timers] == [
        failures[0].occurred_at + 100,
        failures[1].occurred_at + 200,
    ]
    assert [timer.purpose for _, timer in timers] == ["retry", "retry"]
    for attempt, (_, timer) in zip((2, 3), timers, strict=True):
        fired = position(
            sim, lambda p, t=timer: isinstance(p, TimerFired) and p.timer_id == t.timer_id
        )
        assert fired < scheduled_at(sim, "a", 0, attempt)
        assert sim.log[scheduled_at(sim, "a", 0, attempt)].occurred_at == timer.fire_at
    assert sim.terminal() == RunCompleted(sim.run_id, {"a": "ok"})


def test_exhausted_retries_fail_the_run_naming_the_node():
    sim = Simulation(
        workflow(node("a", retry=RETRY), node("b"), edges=[edge("a", "b")]),
        script={"a": fail("503")},
    )
    state = sim.run()
    end = sim.terminal()
    assert isinstance(end, RunFailed)
    assert end.node_id == "a"
    assert end.error == (
        "node 'a' failed after 3 attempts: 503"
        " (not retried: all 3 attempts of its retry.max_attempts used)"
    )
    assert sim.runs_of("a") == [(0, 1), (0, 2), (0, 3)]
    assert sim.runs_of("b") == []
    assert state.nodes["a"].status is NodeStatus.FAILED


def test_non_retryable_failure_fails_at_once():
    sim = Simulation(workflow(node("a", retry=RETRY)), script={"a": fatal("400")})
    sim.run()
    assert sim.runs_of("a") == [(0, 1)]
    assert sim.payloads(TimerSet) == []
    why = "the worker marked the failure permanent"
    error = f"node 'a' failed: 400 (not retried: {why})"
    assert sim.terminal() == RunFailed(sim.run_id, error, "a")


def test_timeout_fails_the_attempt_then_it_is_retried():
    sim = Simulation(
        workflow(node("a", timeout_ms=50, retry={"max_attempts": 2, "initial_backoff_ms": 10})),
        script={"a": [HANG, complete("second")]},
    )
    sim.run()
    failed = sim.payloads(NodeFailed)
    assert [(f.attempt, f.error, f.retryable) for f in failed] == [
        (1, "timed out after 50 ms", True)
    ]
    timeout = next(e for e in sim.distinct() if isinstance(e.payload, NodeFailed))
    assert timeout.occurred_at == 50
    assert timeout.actor == "coordinator"
    assert sim.runs_of("a") == [(0, 1), (0, 2)]
    assert sim.terminal() == RunCompleted(sim.run_id, {"a": "second"})


def test_late_completion_after_a_timeout_is_ignored():
    sim = Simulation(
        workflow(node("a", timeout_ms=50, retry={"max_attempts": 2, "initial_backoff_ms": 1000})),
        script={"a": [complete("late", duration_ms=500), complete("second")]},
    )
    sim.run()
    late = completed_at(sim, "a")
    ((event, completion), _) = sim.entries(NodeCompleted)
    assert completion.output == "late"
    assert event.occurred_at == 500
    assert late < scheduled_at(sim, "a", 0, 2)  # it arrived while waiting to retry
    assert sim.terminal() == RunCompleted(sim.run_id, {"a": "second"})


def test_late_answer_of_an_earlier_attempt_is_ignored_while_the_next_one_runs():
    sim = Simulation(
        workflow(node("a", timeout_ms=50, retry={"max_attempts": 2, "initial_backoff_ms": 10})),
        # Attempt 1 times out at 50 and answers at 100; attempt 2 runs from 60 to 105.
        script={"a": [complete("late", duration_ms=100), complete("second", duration_ms=45)]},
    )
    sim.run_until(lambda s: len(s.payloads(NodeCompleted)) == 1)
    assert sim.now == 100
    assert sim.current.nodes["a"].attempt == 2
    assert sim.current.nodes["a"].status is NodeStatus.RUNNING
    assert "a" not in sim.current.outputs
    sim.run()
    assert sim.terminal() == RunCompleted(sim.run_id, {"a": "second"})


def test_timeout_without_retries_fails_the_run_and_the_late_answer_changes_nothing():
    sim = Simulation(
        workflow(node("a", timeout_ms=50)), script={"a": complete("late", duration_ms=500)}
    )
    state = sim.run()
    assert sim.terminal() == RunFailed(
        sim.run_id,
        "node 'a' failed: timed out after 50 ms"
        " (not retried: the node has no retry policy, its retry.max_attempts is 1)",
        "a",
    )
    assert "a" not in state.outputs
    assert state.status is RunStatus.FAILED


def test_timeout_timer_of_a_finished_attempt_is_ignored():
    sim = Simulation(workflow(node("a", timeout_ms=50)), script={"a": complete("fast")})
    sim.run()
    assert len(sim.payloads(TimerFired)) == 1  # the timer still fires, after the run ended
    assert sim.payloads(NodeFailed) == []
    assert sim.terminal() == RunCompleted(sim.run_id, {"a": "fast"})


# --- run lifecycle ---------------------------------------------------------------------


def test_cancel_ends_the_run_and_later_events_are_ignored():
    sim = Simulation(
        workflow(node("a"), node("b"), edges=[edge("a", "b")]),
        script={"a": complete(duration_ms=100)},
    )
    sim.run_until(lambda s: s.runs_of("a") == [(0, 1)])
    sim.append(RunCancelRequested(sim.run_id, "user asked"))
    assert sim.current.status is RunStatus.CANCELLED
    state = sim.run()  # a's answer still arrives
    assert sim.terminal() == RunCancelled(sim.run_id, "user asked")
    assert sim.runs_of("b") == []
    assert "a" not in state.outputs


def test_unknown_node_type_is_skipped_with_a_warning_and_its_dependents_run():
    sim = Simulation(
        workflow(node("a"), node("m", "mystery"), node("c"), edges=[edge("a", "m"), edge("m", "c")])
    )
    state = sim.run()
    skip = skipped(sim)["m"]
    assert skip.warning
    assert skip.reason == "unknown node type 'mystery'"
    assert sim.runs_of("m") == []
    assert sim.runs_of("c") == [(0, 1)]
    assert state.nodes["m"].status is NodeStatus.SKIPPED
    assert isinstance(sim.terminal(), RunCompleted)


def test_duplicate_events_are_ignored():
    sim = Simulation(workflow(node("a"), node("b"), edges=[edge("a", "b")]))
    sim.run_until(lambda s: any(isinstance(e.payload, NodeCompleted) for e in s.log))
    completion = next(e for e in sim.log if isinstance(e.payload, NodeCompleted))
    before = canonical(sim.state)
    assert fold_quietly(sim, completion) == []
    assert canonical(sim.state) == before
    sim.run()
    assert sim.runs_of("b") == [(0, 1)]


def test_a_redelivered_answer_under_a_new_id_changes_nothing():
    sim = Simulation(workflow(node("a"), node("b"), edges=[edge("a", "b")]))
    sim.run_until(lambda s: s.runs_of("b") == [(0, 1)])
    before = canonical(sim.state)
    emitted = fold_quietly(
        sim, Event("again", sim.run_id, sim.now, NodeCompleted(sim.run_id, "a", 0, 1, "x"))
    )
    assert emitted == []
    sim.current.seen.discard("again")
    assert canonical(sim.state) == before


def test_a_second_submission_of_a_running_run_schedules_nothing():
    sim = Simulation(workflow(node("a"), node("b"), edges=[edge("a", "b")]))
    sim.start()
    assert fold_quietly(sim, Event("resubmit", sim.run_id, 0, sim.log[0].payload)) == []
    sim.run()
    assert sim.runs_of("a") == [(0, 1)]


def test_events_after_the_run_ended_are_ignored():
    sim = Simulation(workflow(node("a")))
    state = sim.run()
    before = canonical(state)
    late: list[Payload] = [
        NodeCompleted(sim.run_id, "a", 0, 1, "again"),
        NodeFailed(sim.run_id, "a", 0, 1, "boom"),
        RunCancelRequested(sim.run_id),
        PatchProposed(sim.run_id, "p1", [{"op": "add", "path": "/nodes/-", "value": node("x")}]),
    ]
    for index, payload in enumerate(late):
        assert fold_quietly(sim, Event(f"late-{index}", sim.run_id, 99, payload)) == []
        sim.current.seen.discard(f"late-{index}")
    assert canonical(sim.state) == before
    assert isinstance(sim.terminal(), RunCompleted)


def test_run_output_expression_shapes_the_output():
    sim = Simulation(
        workflow(node("a"), output="{total: (.nodes.a.n * 2), input: .inputs.x}"),
        script={"a": complete({"n": 21})},
        inputs={"x": "in"},
    )
    sim.run()
    assert sim.terminal() == RunCompleted(sim.run_id, {"total": 42, "input": "in"})


def test_run_output_expression_that_breaks_fails_the_run():
    sim = Simulation(
        workflow(node("a"), output='.nodes.a.n + "x"'), script={"a": complete({"n": 1})}
    )
    sim.run()
    end = sim.terminal()
    assert isinstance(end, RunFailed)
    assert end.error.startswith("run output expression failed: ")


def test_definition_that_does_not_compile_fails_the_run():
    sim = Simulation(workflow(node("a"), edges=[edge("a", "ghost")]))
    state = sim.run()
    end = sim.terminal()
    assert isinstance(end, RunFailed)
    assert end.error.startswith("definition does not compile: /edges/0/to: ")
    assert "ghost" in end.error
    assert sim.scheduled() == []
    assert state.status is RunStatus.FAILED


def test_definition_that_is_not_even_an_object_fails_the_run():
    state, emitted = fold(None, Event("s", "r", 0, RunSubmitted("r", ["nodes"], None, ["work"])))
    assert state is not None
    assert state.status is RunStatus.FAILED
    assert [type(e.payload) for e in emitted] == [RunFailed]


def test_a_pending_approval_of_a_timed_out_attempt_does_not_hold_the_run():
    # Any node may ask for an approval (an agent asking a human, say); hitl nodes
    # themselves carry no node timeout.
    sim = Simulation(
        workflow(
            node("ask", "agent", timeout_ms=50, retry={"max_attempts": 2, "initial_backoff_ms": 10})
        ),
        script={"ask": [HANG, complete("approved")]},
    )
    sim.start()
    sim.append(ApprovalRequested(sim.run_id, "ap-1", "ask", 0, "ok?"))
    state = sim.run()
    assert sim.terminal() == RunCompleted(sim.run_id, {"ask": "approved"})
    assert not state.pending_approvals


def test_an_approval_request_redelivered_after_its_node_finished_does_not_hold_the_run():
    sim = Simulation(workflow(node("ask", "agent"), node("b")), script={"b": HANG})
    sim.start()
    request = ApprovalRequested(sim.run_id, "ap-1", "ask", 0, "ok?")
    sim.append(request)
    sim.append(ApprovalDecided(sim.run_id, "ap-1", "approved", "alice"))
    sim.append(NodeCompleted(sim.run_id, "ask", 0, 1, "done"))
    sim.append(request)  # an at-least-once worker sends it again, under a new id
    assert not sim.current.pending_approvals
    sim.append(NodeCompleted(sim.run_id, "b", 0, 1, "done"))
    assert isinstance(sim.terminal(), RunCompleted)


def test_the_run_waits_for_an_approval_of_its_running_node():
    sim = Simulation(workflow(node("ask", "hitl")), script={"ask": HANG})
    sim.start()
    sim.append(NodeStarted(sim.run_id, "ask", 0, 1, "hitl-worker"))
    sim.append(ApprovalRequested(sim.run_id, "ap-1", "ask", 0, "ok?"))
    sim.append(ApprovalDecided(sim.run_id, "ap-1", "approved", "alice"))
    assert sim.current.status is RunStatus.RUNNING
    sim.append(NodeCompleted(sim.run_id, "ask", 0, 1, {"decision": "approved"}))
    assert isinstance(sim.terminal(), RunCompleted)


# --- patches ---------------------------------------------------------------------------


def add_node(node_id: str, node_type: str = "work", **extra: Any) -> dict[str, Any]:
    return {"op": "add", "path": "/nodes/-", "value": node(node_id, node_type, **extra)}


def add_edge(source: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"op": "add", "path": "/edges/-", "value": edge(source, target, **extra)}


def test_patch_adding_a_node_after_a_finished_node_gets_it_scheduled():
    sim = Simulation(
        workflow(node("a"), node("b"), edges=[edge("a", "b")]),
        script={"b": complete(duration_ms=100)},
    )
    sim.run_until(lambda s: s.current.nodes["a"].status is NodeStatus.COMPLETED)
    sim.append(PatchProposed(sim.run_id, "p1", [add_node("x"), add_edge("a", "x")], "review a"))
    assert sim.payloads(PatchApplied) == [PatchApplied(sim.run_id, "p1", 1, ["x"])]
    assert sim.runs_of("x") == [(0, 1)]
    sim.run()
    assert sim.terminal() == RunCompleted(sim.run_id, {"b": echo("b"), "x": echo("x")})


def test_patch_adding_a_node_after_a_skipped_node_skips_it():
    sim = Simulation(
        workflow(
            node("a"), node("b"), node("c"), edges=[edge("a", "b", when="false"), edge("a", "c")]
        ),
        script={"c": complete(duration_ms=100)},
    )
    sim.run_until(lambda s: s.current.nodes["b"].status is NodeStatus.SKIPPED)
    sim.append(PatchProposed(sim.run_id, "p1", [add_node("x"), add_edge("b", "x")]))
    sim.run()
    assert "x" in skipped(sim)
    assert sim.runs_of("x") == []
    assert isinstance(sim.terminal(), RunCompleted)


def test_patch_touching_a_started_node_is_rejected():
    sim = Simulation(workflow(node("a"), node("b"), edges=[edge("a", "b")]), script={"a": HANG})
    sim.start()
    before = sim.current.definition
    sim.append(
        PatchProposed(
            sim.run_id, "p1", [{"op": "add", "path": "/nodes/0/config", "value": {"x": 1}}]
        )
    )
    (rejected,) = sim.payloads(PatchRejected)
    assert rejected.patch_id == "p1"
    assert any("frozen node: 'a' has started" in reason for reason in rejected.reasons)
    assert sim.current.definition == before
    assert sim.current.revision == 0


def test_patch_proposed_twice_is_applied_once():
    sim = Simulation(workflow(node("a"), node("b"), edges=[edge("a", "b")]), script={"b": HANG})
    sim.run_until(lambda s: s.runs_of("b") == [(0, 1)])
    patch = PatchProposed(sim.run_id, "p1", [add_node("x"), add_edge("a", "x")])
    sim.append(patch)
    sim.append(patch)  # an at-least-once proposer sends it again under a new id
    assert len(sim.payloads(PatchApplied)) == 1
    assert sim.payloads(PatchRejected) == []
    assert sim.current.revision == 1


def test_loop_counts_survive_a_patch_that_adds_a_loop_edge_before_them():
    sim = Simulation(
        workflow(
            node("a"),
            node("b"),
            node("c"),
            node("d"),
            edges=[edge("a", "b"), edge("c", "d"), edge("d", "c", loop={"max_iterations": 1})],
        ),
        script={"a": complete(duration_ms=100), "c": complete(duration_ms=10)},
    )
    sim.run_until(lambda s: s.runs_of("c") == [(0, 1), (1, 1)])
    # A new loop edge at the front of the edge list: the old loop's count must stay its own.
    sim.append(
        PatchProposed(
            sim.run_id,
            "p1",
            [
                {
                    "op": "add",
                    "path": "/edges/0",
                    "value": edge("b", "b", loop={"max_iterations": 1}),
                }
            ],
        )
    )
    assert sim.payloads(PatchApplied)
    sim.run()
    assert sim.runs_of("c") == [(0, 1), (1, 1)]
    assert sim.runs_of("b") == [(0, 1), (1, 1)]
    assert isinstance(sim.terminal(), RunCompleted)


def test_patch_removing_the_last_undecided_input_of_a_join_runs_it():
    sim = Simulation(
        workflow(
            node("a"),
            node("y"),
            node("x"),
            node("c"),
            edges=[edge("a", "c"), edge("y", "x"), edge("x", "c")],
        ),
        script={"y": complete(duration_ms=1000)},
    )
    sim.run_until(lambda s: s.current.nodes["a"].status is NodeStatus.COMPLETED)
    assert sim.runs_of("c") == []  # waits for x, which waits for y
    operations = [
        {"op": "remove", "path": "/edges/2"},
        {"op": "remove", "path": "/edges/1"},
        {"op": "remove", "path": "/nodes/2"},
    ]
    sim.append(PatchProposed(sim.run_id, "p1", operations))
    assert sim.payloads(PatchApplied) == [PatchApplied(sim.run_id, "p1", 1, [])]
    assert sim.runs_of("c") == [(0, 1)]
    assert "x" not in sim.current.nodes
    sim.run()
    assert sim.terminal() == RunCompleted(sim.run_id, {"y": echo("y"), "c": echo("c")})


# --- restarts ----------------------------------------------------------------------------


def test_a_coordinator_rebuilt_from_the_log_mid_run_carries_on_with_its_timers():
    definition = workflow(
        node("a", timeout_ms=50, retry={"max_attempts": 3, "initial_backoff_ms": 100}),
        node("b"),
        edges=[edge("a", "b")],
    )
    script = {"a": [HANG, fail(), complete("third")]}
    uninterrupted = Simulation(definition, script=script)
    uninterrupted.run()
    sim = Simulation(definition, script=script)
    sim.run_until(lambda s: len(s.payloads(TimerSet)) == 2)  # a timeout, then a retry
    sim.state = replay(list(sim.log))  # the host restarted: its state comes from the log
    sim.run()
    assert sim.log == uninterrupted.log
    assert canonical(sim.state) == canonical(uninterrupted.state)
    assert sim.terminal() == RunCompleted(sim.run_id, {"b": echo("b")})


def test_a_replayed_run_starts_from_its_checkpoint_and_runs_only_the_rest():
    definition = workflow(
        node("a"),
        node("b"),
        node("c"),
        node("d"),
        edges=[edge("a", "b"), edge("b", "c"), edge("a", "d"), edge("c", "d")],
    )
    checkpoint = {"run_id": "old", "from_event": 7, "outputs": {"a": "A", "b": "B"}}
    sim = Simulation(definition, checkpoint=checkpoint)
    state = sim.run()
    assert sim.scheduled() == [("c", 0, 1), ("d", 0, 1)]
    task_c = sim.payloads(NodeScheduled)[0]
    assert task_c.input["nodes"] == {"a": "A", "b": "B"}
    assert state.status is RunStatus.COMPLETED


def test_a_checkpoint_of_every_node_completes_the_run_at_once():
    definition = workflow(node("a"), node("b"), edges=[edge("a", "b")])
    sim = Simulation(definition, checkpoint={"outputs": {"a": 1, "b": 2, "gone": 3}})
    state = sim.run()
    assert sim.scheduled() == []
    assert state.status is RunStatus.COMPLETED
    assert sim.terminal() == RunCompleted(sim.run_id, {"b": 2})
