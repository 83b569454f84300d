"""Write the golden run histories: one `<name>.json` per run, next to this file.

Run by hand, and only when the fold's behaviour is MEANT to change:

    .venv/bin/python -m tests.coordinator.golden_runs.generate --force

Without `--force` it refuses to overwrite the recorded histories. Review the diff of
the regenerated files before committing them: every changed line is a run that now
behaves differently. tests/coordinator/test_golden_runs.py replays each history
through the current fold (see history.py).

Each run is a real run of the fold in the simulated world of
tests/coordinator/simulate.py: scripted workers, the timer service firing at
`fire_at`, the evaluator answering expressions, and a person or an agent appending
decisions, patches and reviews where a scenario says so. The simulation is
deterministic (fake clock, ids sim-1, sim-2, ...), so regenerating an unchanged fold
writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from aob.events.types import (
    ApprovalDecided,
    ApprovalRequested,
    ApprovalVoted,
    ExpressionEvaluated,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeStarted,
    PatchProposed,
    PatchReviewed,
    RunCancelRequested,
    SignalReceived,
)
from aob.projections.coordinator.state import NodeStatus
from aob.workers.hitl.decision import node_outcome
from tests.coordinator.golden_runs.history import (
    HERE,
    RACED,
    GoldenRun,
    event_to_json,
    golden_files,
    replay,
)
from tests.coordinator.simulate import (
    HANG,
    Chaos,
    Outcome,
    Simulation,
    complete,
    fail,
    fatal,
)

Scenario = Callable[[], Simulation]
SCENARIOS: dict[str, tuple[str, Scenario]] = {}


def scenario(name: str, description: str) -> Callable[[Scenario], Scenario]:
    def register(build: Scenario) -> Scenario:
        assert name not in SCENARIOS, name
        SCENARIOS[name] = (description, build)
        return build

    return register


def node(node_id: str, node_type: str = "work", **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": node_type, **extra}


def edge(source: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"from": source, "to": target, **extra}


def workflow(*nodes: dict[str, Any], edges: Any = (), **extra: Any) -> dict[str, Any]:
    return {"name": "golden", "nodes": list(nodes), "edges": list(edges), **extra}


def add_node(node_id: str, node_type: str = "work") -> dict[str, Any]:
    return {"op": "add", "path": "/nodes/-", "value": node(node_id, node_type)}


def add_edge(source: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"op": "add", "path": "/edges/-", "value": edge(source, target, **extra)}


RETRY = {"max_attempts": 3, "initial_backoff_ms": 100, "multiplier": 2}
BLOB_A = "sha256:" + "a" * 64
BLOB_B = "sha256:" + "b" * 64
BLOB_OUT = "sha256:" + "c" * 64


# --- joins, dead paths, conditions --------------------------------------------------------


@scenario("linear-chain", "a -> b -> c: each node once, in order; the sink's output")
def _linear() -> Simulation:
    return Simulation(
        workflow(node("a"), node("b"), node("c"), edges=[edge("a", "b"), edge("b", "c")]),
        inputs={"day": "2024-05-01"},
    )


@scenario("join-all", "a fans out to b (slow) and c; d (join: all) waits for both")
def _join_all() -> Simulation:
    return Simulation(
        workflow(
            node("a"),
            node("b"),
            node("c"),
            node("d"),
            edges=[edge("a", "b"), edge("a", "c"), edge("b", "d"), edge("c", "d")],
        ),
        script={"b": complete(duration_ms=100)},
    )


@scenario("join-any", "d (join: any) runs once, on the first of b and c to finish")
def _join_any() -> Simulation:
    return Simulation(
        workflow(
            node("a"),
            node("b"),
            node("c"),
            node("d", join="any"),
            edges=[edge("a", "b"), edge("a", "c"), edge("b", "d"), edge("c", "d")],
        ),
        script={"b": complete(duration_ms=100)},
    )


@scenario("conditional-edges", "a's output picks the branch: `when` verdicts asked and answered")
def _conditional() -> Simulation:
    return Simulation(
        workflow(
            node("a"),
            node("yes"),
            node("no"),
            edges=[edge("a", "yes", when=".nodes.a.go"), edge("a", "no", when=".nodes.a.go | not")],
        ),
        script={"a": complete({"go": True})},
    )


@scenario("dead-path-chain", "a skipped branch propagates down its chain; the join still runs")
def _dead_chain() -> Simulation:
    return Simulation(
        workflow(
            node("a"),
            node("b"),
            node("c"),
            node("d"),
            edges=[edge("a", "b", when="false"), edge("b", "c"), edge("c", "d"), edge("a", "d")],
        )
    )


@scenario("dead-join", "every input of a join is dead: it is skipped and the run completes")
def _dead_join() -> Simulation:
    return Simulation(
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


@scenario("condition-error", "a `when` condition that breaks fails the run, naming the edge")
def _condition_error() -> Simulation:
    return Simulation(
        workflow(node("a"), node("b"), edges=[edge("a", "b", when='.nodes.a.n + "x"')]),
        script={"a": complete({"n": 1})},
    )


@scenario("unknown-node-type", "a node of a type nobody runs is skipped with a warning")
def _unknown_type() -> Simulation:
    return Simulation(
        workflow(node("charge", "htpp"), node("receipt"), edges=[edge("charge", "receipt")])
    )


@scenario("invalid-definition", "a definition that does not compile fails the run at once")
def _invalid() -> Simulation:
    return Simulation(workflow(node("a"), edges=[edge("a", "ghost")]))


# --- loops --------------------------------------------------------------------------------


@scenario("loop-counted", "an unconditional loop runs its body max_iterations + 1 times")
def _loop_counted() -> Simulation:
    return Simulation(
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


def _countdown(task: NodeScheduled) -> Outcome:
    return complete({"left": 2 - task.iteration})


@scenario("loop-until-condition", "a loop ends when its condition turns false; output expression")
def _loop_condition() -> Simulation:
    return Simulation(
        workflow(
            node("tick"),
            node("done"),
            edges=[
                edge("tick", "tick", when=".nodes.tick.left > 0", loop={"max_iterations": 10}),
                edge("tick", "done"),
            ],
            output=".nodes.tick.left",
        ),
        script=_countdown,
    )


def _forever(task: NodeScheduled) -> Outcome:
    return complete({"again": True, "iteration": task.iteration})


@scenario("loop-exhausted", "a loop whose condition still holds ends on its bound: LoopExhausted")
def _loop_exhausted() -> Simulation:
    return Simulation(
        workflow(
            node("tick"),
            node("done"),
            edges=[
                edge("tick", "tick", when=".nodes.tick.again", loop={"max_iterations": 2}),
                edge("tick", "done"),
            ],
        ),
        script=_forever,
    )


@scenario("loop-on-limit-fail", "loop.on_limit: fail turns an exhausted loop into a failed run")
def _loop_fail() -> Simulation:
    return Simulation(
        workflow(
            node("tick"),
            node("done"),
            edges=[
                edge(
                    "tick",
                    "tick",
                    when=".nodes.tick.again",
                    loop={"max_iterations": 2, "on_limit": "fail"},
                ),
                edge("tick", "done"),
            ],
        ),
        script=_forever,
    )


@scenario("loop-abandons-running-body", "a body node still running when the loop restarts")
def _loop_abandon() -> Simulation:
    return Simulation(
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


# --- retries and timeouts -------------------------------------------------------------------


@scenario("retry-backoff", "two retryable failures, each retried after its backoff timer")
def _retry() -> Simulation:
    return Simulation(
        workflow(node("a", retry=RETRY)),
        script={"a": [fail(duration_ms=5), fail(duration_ms=5), complete("ok")]},
    )


@scenario("retries-exhausted", "every attempt fails: the run fails, saying all were used")
def _retries_exhausted() -> Simulation:
    return Simulation(
        workflow(node("a", retry=RETRY), node("b"), edges=[edge("a", "b")]),
        script={"a": fail("503")},
    )


@scenario("not-retried-fatal", "a failure the worker marks permanent is not retried")
def _fatal() -> Simulation:
    return Simulation(workflow(node("a", retry=RETRY)), script={"a": fatal("400")})


@scenario("not-retried-reason", "the worker's reason for not retrying reaches the run's error")
def _not_retried_reason() -> Simulation:
    transform = node("a", "transform", config={"expr": ".inputs"}, retry=RETRY)
    sim = Simulation(workflow(transform), script={"a": HANG})
    sim.start()
    why = "jq errors are deterministic: the same program fails the same input again"
    sim.append(NodeFailed(sim.run_id, "a", 0, 1, "jq: boom", False, why), actor="worker")
    return sim


@scenario("timeout-then-retry", "the first attempt hangs, times out, and the retry completes")
def _timeout_retry() -> Simulation:
    return Simulation(
        workflow(node("a", timeout_ms=50, retry={"max_attempts": 2, "initial_backoff_ms": 10})),
        script={"a": [HANG, complete("second")]},
    )


@scenario("timeout-late-answer", "no retries: the timeout fails the run, the late answer is moot")
def _timeout_late() -> Simulation:
    return Simulation(
        workflow(node("a", timeout_ms=50)), script={"a": complete("late", duration_ms=500)}
    )


@scenario("timeout-of-finished-attempt", "the timeout timer of a completed attempt fires late")
def _timeout_finished() -> Simulation:
    return Simulation(workflow(node("a", timeout_ms=50)), script={"a": complete("fast")})


@scenario("late-answer-of-earlier-attempt", "attempt 1 answers while attempt 2 runs: ignored")
def _late_attempt() -> Simulation:
    return Simulation(
        workflow(node("a", timeout_ms=50, retry={"max_attempts": 2, "initial_backoff_ms": 10})),
        script={"a": [complete("late", duration_ms=100), complete("second", duration_ms=45)]},
    )


# --- approvals --------------------------------------------------------------------------------


def _gate(**config: Any) -> dict[str, Any]:
    return node("gate", "hitl", config={"message": "Ship it?", **config})


def _ask(sim: Simulation, *, deadline_in: int | None = None, iteration: int = 0) -> str:
    """What the hitl service does with the gate's task: start it, request the approval."""
    sim.run_until(lambda s: ("gate", iteration, 1) in s.scheduled())
    started = NodeStarted(sim.run_id, "gate", iteration, 1, "hitl")
    sim.append(started, actor="service:aob-hitl")
    approval_id = f"approval-gate-{iteration}-1"
    deadline = None if deadline_in is None else sim.now + deadline_in
    request = ApprovalRequested(
        sim.run_id, approval_id, "gate", iteration, "Ship it?", deadline=deadline
    )
    sim.append(request, actor="service:aob-hitl")
    return approval_id


def _decide(sim: Simulation, approval_id: str, decision: str, by: str = "alice") -> None:
    sim.now += 10
    decided = ApprovalDecided(sim.run_id, approval_id, decision, by, "looked at it")
    sim.append(decided, actor=by)


def _conclude(sim: Simulation, approval_id: str, *, iteration: int = 0) -> None:
    """The hitl service completes the gate with the decision that won the approval."""
    won = next(
        e
        for e in sim.distinct()
        if isinstance(e.payload, ApprovalDecided) and e.payload.approval_id == approval_id
    )
    approval = {
        "run_id": sim.run_id,
        "approval_id": approval_id,
        "node_id": "gate",
        "iteration": iteration,
        "attempt": 1,
    }
    sim.append(node_outcome(approval, won), actor="service:aob-hitl")


@scenario("approval-approved", "a hitl gate approved by a person: the approve route runs")
def _approved() -> Simulation:
    sim = Simulation(
        workflow(
            _gate(rejection_path=["revise"]),
            node("ship"),
            node("revise"),
            edges=[edge("gate", "ship")],
        ),
        script={"gate": HANG},
    )
    approval = _ask(sim)
    _decide(sim, approval, "approve")
    _conclude(sim, approval)
    return sim


@scenario(
    "approval-rejected", "a rejection runs the gate's rejection_path, skips the approve route"
)
def _rejected() -> Simulation:
    sim = Simulation(
        workflow(
            _gate(rejection_path=["revise"]),
            node("ship"),
            node("revise"),
            edges=[edge("gate", "ship")],
        ),
        script={"gate": HANG},
    )
    approval = _ask(sim)
    _decide(sim, approval, "reject")
    _conclude(sim, approval)
    return sim


@scenario("approval-join-after-rejection", "a join: all fed by the approve route and another")
def _join_after_rejection() -> Simulation:
    sim = Simulation(
        workflow(
            node("order"),
            _gate(),
            node("label"),
            node("invoice"),
            node("ship"),
            edges=[
                edge("order", "gate"),
                edge("gate", "label"),
                edge("order", "invoice"),
                edge("label", "ship"),
                edge("invoice", "ship"),
            ],
        ),
        script={"gate": HANG},
    )
    approval = _ask(sim)
    _decide(sim, approval, "reject")
    _conclude(sim, approval)
    return sim


@scenario("approval-deadline", "nobody decides: the deadline timer fires and decides on_timeout")
def _deadline() -> Simulation:
    sim = Simulation(
        workflow(
            _gate(timeout_ms=300, on_timeout="reject", rejection_path=["remind"]),
            node("publish"),
            node("remind"),
            edges=[edge("gate", "publish")],
        ),
        script={"gate": HANG},
    )
    approval = _ask(sim, deadline_in=300)
    sim.run_until(lambda s: bool(s.payloads(ApprovalDecided)))
    _conclude(sim, approval)
    return sim


@scenario(
    "approval-decided-before-deadline", "a person decides first: the deadline decides nothing"
)
def _before_deadline() -> Simulation:
    sim = Simulation(
        workflow(_gate(timeout_ms=300), node("publish"), edges=[edge("gate", "publish")]),
        script={"gate": HANG},
    )
    approval = _ask(sim, deadline_in=300)
    _decide(sim, approval, "approve", by="bob")
    _conclude(sim, approval)
    return sim


@scenario("approval-by-agent", "a worker asks for an approval while it runs; decided halfway")
def _agent_approval() -> Simulation:
    asks = Outcome("complete", {"sent": True}, duration_ms=40, asks_approval=True)
    return Simulation(
        workflow(node("ask", "agent"), node("after"), edges=[edge("ask", "after")]),
        script={"ask": asks},
    )


@scenario("approval-of-timed-out-attempt", "an approval of an attempt that timed out holds nothing")
def _approval_timed_out() -> Simulation:
    sim = Simulation(
        workflow(
            node("ask", "agent", timeout_ms=50, retry={"max_attempts": 2, "initial_backoff_ms": 10})
        ),
        script={"ask": [HANG, complete("approved")]},
    )
    sim.start()
    sim.append(ApprovalRequested(sim.run_id, "ap-1", "ask", 0, "ok?"), actor="worker")
    return sim


# --- approvals that organisations need: quorum, escalation, signals ------------------------


def _vote(sim: Simulation, approval_id: str, decision: str, voter: str) -> None:
    sim.now += 10
    sim.append(ApprovalVoted(sim.run_id, approval_id, decision, voter, f"{voter}: {decision}"))


def _signal(sim: Simulation, name: str, payload: Any) -> SignalReceived:
    return SignalReceived(sim.run_id, name, payload, sent_by="bank")


def _shipping(gate: dict[str, Any], *, before: bool = False) -> dict[str, Any]:
    """gate -> ship, revise on rejection; with `before`, a node `a` runs first."""
    nodes = [node("a")] if before else []
    edges = [edge("a", "gate")] if before else []
    return workflow(
        *nodes, gate, node("ship"), node("revise"), edges=[*edges, edge("gate", "ship")]
    )


@scenario(
    "approval-quorum",
    "two of three must approve: a voter's second vote counts nothing, the quorum decides",
)
def _quorum() -> Simulation:
    gate = _gate(approvers=["ann", "bob", "cy"], quorum=2, rejection_path=["revise"])
    sim = Simulation(_shipping(gate), script={"gate": HANG})
    approval = _ask(sim)
    _vote(sim, approval, "approve", "ann")
    _vote(sim, approval, "reject", "ann")  # the first vote stands
    _vote(sim, approval, "approve", "bob")
    _vote(sim, approval, "reject", "cy")  # decided already: nothing
    _conclude(sim, approval)
    return sim


@scenario(
    "approval-escalated",
    "nobody decides: the deadline re-requests from the next group, whose deadline then decides",
)
def _escalated() -> Simulation:
    escalation = [{"approvers": ["boss"], "roles": ["cfo"], "timeout_ms": 200}]
    gate = _gate(
        approvers=["ann"],
        timeout_ms=300,
        escalation=escalation,
        on_timeout="reject",
        rejection_path=["revise"],
    )
    sim = Simulation(_shipping(gate), script={"gate": HANG})
    approval = _ask(sim, deadline_in=300)
    sim.run_until(lambda s: bool(s.payloads(ApprovalDecided)))
    _conclude(sim, approval)
    return sim


@scenario(
    "approval-signal-lookback",
    "a signal sent before the gate's wait began ends the wait as soon as it is requested",
)
def _signal_lookback() -> Simulation:
    gate = _gate(signals=["paid"], timeout_ms=1000, rejection_path=["revise"])
    script = {"a": complete(duration_ms=100), "gate": HANG}
    sim = Simulation(_shipping(gate, before=True), script=script)
    sim.start()
    sim.append(_signal(sim, "paid", {"ref": "early"}), actor="bank")
    approval = _ask(sim, deadline_in=1000)
    _conclude(sim, approval)
    return sim


@scenario(
    "approval-signal-race",
    "a decision lands between a signal and the coordinator's answer: the person wins, the "
    "signal counts as used, so the gate's next iteration waits for a new one",
)
def _signal_race() -> Simulation:
    gate = _gate(signals=["paid"])
    sim = Simulation(
        workflow(
            gate,
            node("check"),
            edges=[edge("gate", "check"), edge("check", "gate", loop={"max_iterations": 1})],
        ),
        script={"gate": HANG},
    )
    first = _ask(sim)
    sim.now += 10
    decided = ApprovalDecided(sim.run_id, first, "approve", "alice", "looked at it")
    sim.append_together((_signal(sim, "paid", {"n": 1}), "bank"), (decided, "alice"))
    _conclude(sim, first)
    second = _ask(sim, iteration=1)
    sim.now += 10
    sim.append(_signal(sim, "paid", {"n": 2}), actor="bank")
    _conclude(sim, second, iteration=1)
    return sim


# --- patches -----------------------------------------------------------------------------------


@scenario("patch-applied", "a patch adds a node after a finished one: it is scheduled")
def _patch_applied() -> Simulation:
    sim = Simulation(
        workflow(node("a"), node("b"), edges=[edge("a", "b")]),
        script={"b": complete(duration_ms=100)},
    )
    sim.run_until(lambda s: s.current.nodes["a"].status is NodeStatus.COMPLETED)
    sim.append(PatchProposed(sim.run_id, "p1", [add_node("x"), add_edge("a", "x")], "review a"))
    return sim


@scenario("patch-rejected", "a patch touching a started node is rejected with its reason")
def _patch_rejected() -> Simulation:
    sim = Simulation(
        workflow(node("a"), node("b"), edges=[edge("a", "b")]),
        script={"a": complete(duration_ms=50)},
    )
    sim.start()
    touch = [{"op": "add", "path": "/nodes/0/config", "value": {"x": 1}}]
    sim.append(PatchProposed(sim.run_id, "p1", touch, "tweak a"), actor="alice")
    return sim


def _reviewed(decision: str) -> Simulation:
    sim = Simulation(
        workflow(
            node("plan", "agent"), node("b"), edges=[edge("plan", "b")], patch_policy="review"
        ),
        script={"plan": complete({"plan": "more"}, duration_ms=20)},
    )
    sim.run_until(lambda s: s.current.nodes["plan"].status is NodeStatus.RUNNING)
    operations = [add_node("extra"), add_edge("plan", "extra")]
    proposal = PatchProposed(sim.run_id, "p1", operations, "one more step", "plan", 0, 1)
    sim.append(proposal, actor="agent")
    sim.run_until(lambda s: s.current.nodes["b"].status is NodeStatus.COMPLETED)
    sim.now += 100
    reason = "" if decision == "approve" else "not needed"
    sim.append(PatchReviewed(sim.run_id, "p1", decision, "carol", reason), actor="carol")
    return sim


@scenario("patch-review-approved", "an agent's patch waits for review; approved, it applies")
def _review_approved() -> Simulation:
    return _reviewed("approve")


@scenario("patch-review-rejected", "an agent's patch waits for review; rejected with a reason")
def _review_rejected() -> Simulation:
    return _reviewed("reject")


@scenario("patch-from-stale-attempt", "only the agent's current attempt may patch the run")
def _stale_patch() -> Simulation:
    sim = Simulation(
        workflow(node("planner", "agent")), script={"planner": complete(duration_ms=30)}
    )
    sim.run_until(lambda s: ("planner", 0, 1) in s.scheduled())
    stale = PatchProposed(sim.run_id, "p-old", [add_node("x")], "", "planner", 0, 2)
    sim.append(stale, actor="agent")
    current = PatchProposed(sim.run_id, "p-now", [add_node("x")], "", "planner", 0, 1)
    sim.append(current, actor="agent")
    return sim


@scenario("patch-removes-join-input", "a patch removes a join's last undecided input: it runs")
def _patch_join() -> Simulation:
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
    operations = [
        {"op": "remove", "path": "/edges/2"},
        {"op": "remove", "path": "/edges/1"},
        {"op": "remove", "path": "/nodes/2"},
    ]
    sim.append(PatchProposed(sim.run_id, "p1", operations), actor="alice")
    return sim


@scenario("patch-adds-loop", "a patch adds a loop edge; the existing loop keeps its own count")
def _patch_loop() -> Simulation:
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
    loop = {"op": "add", "path": "/edges/0", "value": edge("b", "b", loop={"max_iterations": 1})}
    sim.append(PatchProposed(sim.run_id, "p1", [loop]), actor="alice")
    return sim


# --- cancel, fork, outputs, blobs, an unreliable world ---------------------------------------


@scenario("cancel", "a run cancelled while a node runs; the late answer changes nothing")
def _cancel() -> Simulation:
    sim = Simulation(
        workflow(node("a"), node("b"), edges=[edge("a", "b")]),
        script={"a": complete(duration_ms=500)},
    )
    sim.run_until(lambda s: s.current.nodes["a"].status is NodeStatus.RUNNING)
    sim.now += 100
    sim.append(RunCancelRequested(sim.run_id, "changed my mind"), actor="alice")
    return sim


@scenario("fork-from-checkpoint", "a replay of another run from a checkpoint runs only the rest")
def _fork() -> Simulation:
    checkpoint = {"run_id": "run-0", "from_event": "sim-7", "outputs": {"a": "A", "b": "B"}}
    return Simulation(
        workflow(
            node("a"),
            node("b"),
            node("c"),
            node("d"),
            edges=[edge("a", "b"), edge("b", "c"), edge("a", "d"), edge("c", "d")],
        ),
        checkpoint=checkpoint,
    )


@scenario("fork-checkpoint-complete", "a checkpoint holding every node completes the run at once")
def _fork_complete() -> Simulation:
    return Simulation(
        workflow(node("a"), node("b"), edges=[edge("a", "b")]),
        checkpoint={"outputs": {"a": 1, "b": 2, "gone": 3}},
    )


@scenario("output-expression", "the run's output expression is evaluated outside the fold")
def _output() -> Simulation:
    return Simulation(
        workflow(
            node("a"), node("b"), edges=[edge("a", "b")], output="{a: .nodes.a.n, b: .nodes.b}"
        ),
        script={"a": complete({"n": 41})},
    )


@scenario("output-expression-error", "an output expression that breaks fails the run")
def _output_error() -> Simulation:
    return Simulation(workflow(node("a"), output='.nodes.a + "x"'), script={"a": complete(1)})


@scenario("blob-refs", "outputs in the blob store travel as refs; the evaluator assembles the end")
def _blobs() -> Simulation:
    sim = Simulation(
        workflow(node("a"), node("b"), node("c"), edges=[edge("a", "b"), edge("a", "c")]),
        script={"a": HANG, "b": HANG},
    )
    sim.start()
    sim.append(NodeCompleted(sim.run_id, "a", 0, 1, None, output_ref=BLOB_A), actor="worker")
    sim.run_until(lambda s: s.current.nodes["c"].status is NodeStatus.COMPLETED)
    sim.append(NodeCompleted(sim.run_id, "b", 0, 1, None, output_ref=BLOB_B), actor="worker")
    # The evaluator fetches the refs and stores the large result: answer as it would.
    sim.pending = [p for p in sim.pending if not isinstance(p.payload, ExpressionEvaluated)]
    request_id = "output:1"
    evaluated = ExpressionEvaluated(sim.run_id, request_id, None, result_ref=BLOB_OUT)
    sim.append(evaluated, actor="service:aob-evaluator")
    return sim


@scenario("unreliable-world", "answers in any order, redelivered under new ids, log entries twice")
def _chaos() -> Simulation:
    return Simulation(
        workflow(
            node("a", retry={"max_attempts": 2, "initial_backoff_ms": 5}),
            node("b", timeout_ms=40, retry={"max_attempts": 2, "initial_backoff_ms": 5}),
            node("c"),
            node("d", join="any"),
            edges=[edge("a", "b"), edge("a", "c"), edge("b", "d"), edge("c", "d", when="true")],
        ),
        script={"a": [fail(), complete()], "b": [HANG, complete(duration_ms=10)]},
        chaos=Chaos(seed=14, shuffle=True, redeliver=0.3, duplicate=0.2),
    )


# --- writing ------------------------------------------------------------------------------------


def record(name: str) -> GoldenRun:
    """Run the scenario to its end; its log as a golden run."""
    description, build = SCENARIOS[name]
    sim = build()
    sim.run()
    events = [
        {**event_to_json(event), **({RACED: True} if event.event_id in sim.raced else {})}
        for event in sim.log
    ]
    return GoldenRun(name, description, events)


def write(run: GoldenRun) -> None:
    """One file per run, one event per line: readable, and a diff names the events."""
    lines = [json.dumps(_stable(event), ensure_ascii=False) for event in run.events]
    head = json.dumps({"name": run.name, "description": run.description}, ensure_ascii=False)
    text = head[:-1] + ', "events": [\n' + ",\n".join(lines) + "\n]}\n"
    (HERE / f"{run.name}.json").write_text(text, encoding="utf-8")


def _stable(event: dict[str, Any]) -> dict[str, Any]:
    """The envelope in its own order, the payload's objects with sorted keys: the fold
    builds some from sets (a node's `reads`), whose order changes between processes."""
    return {**event, "data": _sorted(event["data"])}


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite the recorded histories")
    args = parser.parse_args(argv)
    existing = golden_files()
    if existing and not args.force:
        print(
            f"{HERE} holds {len(existing)} recorded histories; pass --force to overwrite them "
            "(only when the fold's behaviour is meant to change)",
            file=sys.stderr,
        )
        return 2
    runs = [record(name) for name in SCENARIOS]
    for run in runs:
        mismatch = replay(run)
        assert mismatch is None, f"the fold does not replay its own recording: {mismatch}"
    for path in existing:
        path.unlink()
    for run in runs:
        write(run)
    print(f"wrote {len(runs)} golden run histories to {HERE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
