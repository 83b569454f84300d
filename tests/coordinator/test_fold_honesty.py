"""Issue 14, honest semantics: what the fold does not do, it says, and why.

A failure that ends a run names why no further attempt was made; a loop whose
condition still held when it reached its bound leaves a LoopExhausted warning (or
fails the run, when the loop says `on_limit: fail`); a counted loop, which ends on
its count by design, leaves none."""

from __future__ import annotations

from typing import Any

from aob.events.types import LoopExhausted, NodeFailed, NodeScheduled, RunCompleted, RunFailed
from tests.coordinator.simulate import Outcome, Simulation, complete, fail, fatal
from tests.coordinator.test_fold_examples import edge, node, workflow


def forever(task: NodeScheduled) -> Outcome:
    return complete({"again": True, "iteration": task.iteration})


def test_a_loop_that_ends_on_its_bound_with_its_condition_true_warns() -> None:
    sim = Simulation(
        workflow(
            node("tick"),
            node("done"),
            edges=[
                edge("tick", "tick", when=".nodes.tick.again", loop={"max_iterations": 2}),
                edge("tick", "done"),
            ],
        ),
        script=forever,
    )
    sim.run()
    assert sim.runs_of("tick") == [(0, 1), (1, 1), (2, 1)]
    assert sim.payloads(LoopExhausted) == [LoopExhausted(sim.run_id, "tick", "tick", 2)]
    assert sim.runs_of("done") == [(0, 1)]  # routes on, as before: only now it says so
    assert isinstance(sim.terminal(), RunCompleted)


def test_on_limit_fail_makes_an_exhausted_loop_fail_the_run() -> None:
    loop: dict[str, Any] = {"max_iterations": 2, "on_limit": "fail"}
    sim = Simulation(
        workflow(
            node("tick"),
            node("done"),
            edges=[
                edge("tick", "tick", when=".nodes.tick.again", loop=loop),
                edge("tick", "done"),
            ],
        ),
        script=forever,
    )
    sim.run()
    assert sim.payloads(LoopExhausted) == [LoopExhausted(sim.run_id, "tick", "tick", 2, True)]
    assert sim.runs_of("done") == []
    end = sim.terminal()
    assert isinstance(end, RunFailed)
    assert "reached max_iterations (2) with its condition still true (on_limit: fail)" in end.error


def test_a_loop_whose_condition_turns_false_and_a_counted_loop_do_not_warn() -> None:
    def countdown(task: NodeScheduled) -> Outcome:
        return complete({"again": task.iteration < 1})

    conditional = Simulation(
        workflow(
            node("tick"),
            edges=[edge("tick", "tick", when=".nodes.tick.again", loop={"max_iterations": 5})],
        ),
        script=countdown,
    )
    conditional.run()
    counted = Simulation(
        workflow(node("tick"), edges=[edge("tick", "tick", loop={"max_iterations": 2})])
    )
    counted.run()
    for sim in (conditional, counted):
        assert sim.payloads(LoopExhausted) == []
        assert isinstance(sim.terminal(), RunCompleted)


def test_every_failure_that_ends_a_run_says_why_it_was_not_retried() -> None:
    def permanent(task: NodeScheduled) -> Outcome:
        return fatal("jq: boom")

    cases = {
        "the worker marked the failure permanent": (permanent, {}),
        "the node has no retry policy, its retry.max_attempts is 1": (lambda t: fail("503"), {}),
        "all 2 attempts of its retry.max_attempts used": (
            lambda t: fail("503"),
            {"retry": {"max_attempts": 2, "initial_backoff_ms": 1}},
        ),
    }
    for why, (script, extra) in cases.items():
        sim = Simulation(workflow(node("a", "work", **extra)), script=script)
        sim.run()
        end = sim.terminal()
        assert isinstance(end, RunFailed)
        assert end.error.endswith(f"(not retried: {why})"), end.error


def test_the_workers_reason_is_carried_to_the_run() -> None:
    sim = Simulation(workflow(node("a")))
    sim.start()
    assert [(t.node_id, t.attempt) for t in sim.payloads(NodeScheduled)] == [("a", 1)]
    why = "jq errors are deterministic: the same program fails the same input again"
    sim.append(NodeFailed(sim.run_id, "a", 0, 1, "jq: boom", False, why))
    end = sim.terminal()
    assert isinstance(end, RunFailed)
    assert end.error == f"node 'a' failed: jq: boom (not retried: {why})"
