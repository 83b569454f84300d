"""Properties of the coordinator fold over random workflows and a misbehaving world.

Random DAGs of 1..12 nodes (some of an unknown type), random forward edges whose
conditions are constants, upstream outputs or the iteration, random join modes,
bounded loop back-edges, retry policies and timeouts; workers that fail, hang,
answer late or twice, ask for approvals; timers and answers delivered in any
order; log entries duplicated; a patch (maybe an agent's, under review) or a cancel
dropped in at a random moment. A failing example prints as a `Scenario` (its chaos
seed included), and hypothesis' database replays it first on the next run.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aob.events.types import (
    TERMINAL_RUN_EVENTS,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeSkipped,
    PatchProposed,
    PatchReviewed,
    Payload,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    TimerFired,
)
from aob.projections.coordinator.fold import fold
from aob.projections.coordinator.state import NodeStatus, RunState
from tests.coordinator.simulate import (
    HANG,
    Chaos,
    Outcome,
    Simulation,
    canonical,
    complete,
    fail,
    fatal,
    replayed,
)

MAX_STEPS = 20_000
DONE = frozenset({NodeStatus.COMPLETED, NodeStatus.SKIPPED})
PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- random workflows ---------------------------------------------------------------


def _ids(count: int) -> list[str]:
    return [f"n{i}" for i in range(count)]


@st.composite
def node_specs(draw: st.DrawFn, node_id: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": node_id,
        "type": draw(st.sampled_from(["work"] * 5 + ["mystery"])),
        "join": draw(st.sampled_from(["all", "any"])),
    }
    if draw(st.integers(0, 3)) > 0:
        spec["retry"] = {
            "max_attempts": draw(st.integers(1, 4)),
            "initial_backoff_ms": draw(st.integers(0, 100)),
            "multiplier": draw(st.sampled_from([1, 2, 3])),
        }
    if draw(st.integers(0, 3)) == 0:
        spec["timeout_ms"] = draw(st.integers(10, 200))
    return spec


def conditions(source: str, node_ids: list[str]) -> st.SearchStrategy[str | None]:
    """Constants, the source's or any node's output, the iteration; rarely one that breaks."""
    other = st.sampled_from(node_ids)
    return st.one_of(
        st.sampled_from([None, None, None, "true", "false", ".iteration < 1"]),
        st.sampled_from([f".nodes.{source}.flag", f".nodes.{source}.flag | not"]),
        other.map(lambda n: f".nodes.{n}.flag"),
        st.sampled_from([None] * 30 + [f".nodes.{source}.flag + 1"]),
    )


def _reachable(start: str, edges: list[dict[str, Any]]) -> list[str]:
    """Nodes reachable from `start` (itself included) over forward edges, sorted."""
    seen, stack = {start}, [start]
    while stack:
        here = stack.pop()
        for edge in edges:
            if edge["from"] == here and edge["to"] not in seen:
                seen.add(edge["to"])
                stack.append(edge["to"])
    return sorted(seen)


@st.composite
def forward_edges(draw: st.DrawFn, node_ids: list[str]) -> list[dict[str, Any]]:
    edges = []
    for target in range(1, len(node_ids)):
        sources = draw(st.lists(st.integers(0, target - 1), unique=True, max_size=3))
        for source in sources:
            edge = {"from": node_ids[source], "to": node_ids[target]}
            when = draw(conditions(node_ids[source], node_ids))
            if when is not None:
                edge["when"] = when
            edges.append(edge)
    return edges


@st.composite
def loop_edges(
    draw: st.DrawFn, node_ids: list[str], edges: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Up to two back-edges, each from a node back to one that reaches it."""
    loops = []
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        target = draw(st.sampled_from(node_ids))
        source = draw(st.sampled_from(_reachable(target, edges)))
        loop: dict[str, Any] = {
            "from": source,
            "to": target,
            "loop": {"max_iterations": draw(st.integers(1, 3))},
        }
        when = draw(conditions(source, node_ids))
        if when is not None:
            loop["when"] = when
        loops.append(loop)
    return loops


@st.composite
def workflows(draw: st.DrawFn) -> dict[str, Any]:
    node_ids = _ids(draw(st.integers(1, 12)))
    nodes = [draw(node_specs(node_id)) for node_id in node_ids]
    edges = draw(forward_edges(node_ids))
    edges += draw(loop_edges(node_ids, edges))
    return {"name": "random", "nodes": nodes, "edges": edges}


# --- random workers ---------------------------------------------------------------------


@st.composite
def attempt_outcomes(draw: st.DrawFn, timeout_ms: int | None) -> Outcome:
    kinds = ["complete"] * 30 + ["fail"] * 3 + ["fatal"]
    if timeout_ms is not None:
        kinds += ["hang"] * 6 + ["late"] * 2
    kind = draw(st.sampled_from(kinds))
    duration = draw(st.integers(0, 30))
    if kind == "fail":
        return fail(duration_ms=duration)
    if kind == "fatal":
        return fatal(duration_ms=duration)
    if kind == "hang":
        return HANG
    if kind == "late":
        assert timeout_ms is not None
        return complete(duration_ms=timeout_ms + duration + 1)
    return complete(duration_ms=duration)


@dataclass(frozen=True)
class Workers:
    """Per node: outcomes by attempt (the last repeats) and output flags by iteration."""

    outcomes: dict[str, list[Outcome]]
    flags: dict[str, list[bool]]
    approvals: dict[str, bool]  # whether the node asks a person for an approval

    def __call__(self, task: NodeScheduled) -> Outcome:
        outcomes = self.outcomes.get(task.node_id, [complete()])  # patched-in nodes complete
        outcome = outcomes[min(task.attempt, len(outcomes)) - 1]
        flags = self.flags.get(task.node_id, [True])
        flag = flags[task.iteration % len(flags)]
        output = {"flag": flag, "iteration": task.iteration, "attempt": task.attempt}
        return dataclasses.replace(
            outcome, output=output, asks_approval=self.approvals.get(task.node_id, False)
        )


@st.composite
def workers(draw: st.DrawFn, definition: dict[str, Any]) -> Workers:
    outcomes, flags, approvals = {}, {}, {}
    for spec in definition["nodes"]:
        per_attempt = attempt_outcomes(spec.get("timeout_ms"))
        outcomes[spec["id"]] = draw(st.lists(per_attempt, min_size=1, max_size=3))
        flags[spec["id"]] = draw(st.lists(st.booleans(), min_size=1, max_size=3))
        # Nodes that wait for a person tend to have timeouts.
        approvals[spec["id"]] = draw(st.integers(0, 1 if "timeout_ms" in spec else 2)) == 0
    return Workers(outcomes, flags, approvals)


chaos = st.builds(
    Chaos,
    seed=st.integers(0, 2**32 - 1),
    shuffle=st.booleans(),
    redeliver=st.sampled_from([0.0, 0.2]),
    duplicate=st.sampled_from([0.0, 0.2]),
)


Disturbance = tuple[int, Payload]  # something appended at a step of the run


@st.composite
def patch_operations(draw: st.DrawFn, definition: dict[str, Any]) -> list[dict[str, Any]]:
    """A node added after a random node and, maybe, an edge from it into another one:
    refused if that one has started (its incoming edges are frozen)."""
    node_ids = [n["id"] for n in definition["nodes"]]
    after = draw(st.sampled_from(node_ids))
    operations = [
        {"op": "add", "path": "/nodes/-", "value": {"id": "patched", "type": "work"}},
        {"op": "add", "path": "/edges/-", "value": {"from": after, "to": "patched"}},
    ]
    before = draw(st.sampled_from([None, *node_ids]))
    if before is not None and after not in _reachable(before, definition["edges"]):
        edge = {"from": "patched", "to": before}
        operations.append({"op": "add", "path": "/edges/-", "value": edge})
    return operations


@st.composite
def disturbances(draw: st.DrawFn, definition: dict[str, Any]) -> tuple[Disturbance, ...]:
    """Maybe a cancel, a patch, or an agent's patch and its review, at random steps."""
    kind = draw(st.sampled_from(["none", "none", "patch", "patch", "reviewed", "cancel"]))
    at = draw(st.integers(0, 40))
    if kind == "none":
        return ()
    if kind == "cancel":
        return ((at, RunCancelRequested("run-1", "random cancel")),)
    operations = draw(patch_operations(definition))
    if kind == "patch":
        return ((at, PatchProposed("run-1", "random-patch", operations)),)
    agent = draw(st.sampled_from([n["id"] for n in definition["nodes"]]))
    proposed = PatchProposed("run-1", "random-patch", operations, node_id=agent)
    decision = draw(st.sampled_from(["approve", "reject"]))
    reviewed = PatchReviewed("run-1", "random-patch", decision, "reviewer")
    return (at, proposed), (at + draw(st.integers(0, 40)), reviewed)


@dataclass(frozen=True)
class Scenario:
    """Everything one example is made of (printed by hypothesis when it fails)."""

    definition: dict[str, Any]
    workers: Workers
    chaos: Chaos
    disturbances: tuple[Disturbance, ...]

    def play(self) -> tuple[Simulation, RunState]:
        """Run to the end, dropping each disturbance in at its step (or earlier, when
        the world has nothing else to deliver: a reviewer decides eventually)."""
        sim = Simulation(self.definition, script=self.workers, chaos=self.chaos).start()
        due = list(self.disturbances)
        for step in range(MAX_STEPS):
            while due and (due[0][0] <= step or not sim.pending):
                sim.append(due.pop(0)[1])
            if not sim.step():
                break
        return sim, sim.current


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    definition = draw(workflows())
    troubles = draw(disturbances(definition))
    if any(isinstance(payload, PatchReviewed) for _, payload in troubles):
        definition = {**definition, "patch_policy": "review"}
    return Scenario(definition, draw(workers(definition)), draw(chaos), troubles)


# --- the properties ------------------------------------------------------------------------
# Two tests share the checks below, so each example is played once per test.


def check_terminates_once(sim: Simulation, state: RunState) -> None:
    """The run ends, with one terminal event, after which the coordinator is silent."""
    assert state.is_finished, f"stuck: {canonical(state)}"
    sim.terminal()  # exactly one, whatever the world did
    assert not sim.pending, "the world was still busy after MAX_STEPS"
    events = list(sim.distinct())
    end = next(i for i, e in enumerate(events) if isinstance(e.payload, TERMINAL_RUN_EVENTS))
    assert [e for e in events[end + 1 :] if e.actor == "coordinator"] == []


def check_scheduled_once_within_bounds(sim: Simulation, state: RunState) -> None:
    """Each (node, iteration, attempt) is scheduled at most once, within the retry
    policy and the loop bounds (the counter itself is checked after every fold)."""
    counts = Counter(sim.scheduled())
    assert [key for key, count in counts.items() if count > 1] == []
    ir = state.ir
    for node_id, iteration, attempt in counts:
        assert attempt <= ir.nodes[node_id].retry.max_attempts
        loops = zip(ir.loops, ir.loop_bodies, strict=True)
        bound = sum(loop.max_iterations or 0 for loop, body in loops if node_id in body)
        assert iteration <= bound, (node_id, iteration)


def check_end_state(sim: Simulation, state: RunState) -> None:
    """A completed run left nothing undone; a node failure names a failed node."""
    end = sim.terminal()
    if isinstance(end, RunCompleted):
        assert state.outstanding == 0
        assert not state.pending_approvals
        unfinished = {n: s.status for n, s in state.nodes.items() if s.status not in DONE}
        assert unfinished == {}
    elif isinstance(end, RunFailed) and end.error.startswith("node "):
        assert end.node_id is not None
        assert state.nodes[end.node_id].status is NodeStatus.FAILED


def check_outputs(sim: Simulation, state: RunState) -> None:
    """A completed node's output is the answer of its current instance: never a late
    one from an earlier iteration or attempt, nor from an attempt that timed out."""
    timed_out = {
        (p.node_id, p.iteration, p.attempt)
        for event, p in sim.entries(NodeFailed)
        if event.actor == "coordinator"
    }
    for node_id, node in state.nodes.items():
        if node.status is NodeStatus.COMPLETED:
            output = state.outputs[node_id]
            assert (output["iteration"], output["attempt"]) == (node.iteration, node.attempt)
            assert (node_id, node.iteration, node.attempt) not in timed_out


def check_causes(sim: Simulation, state: RunState) -> None:
    """A retry follows its backoff timer; a first run follows its join's inputs.

    Inputs as of the final definition: a patch only adds edges here, and never
    into a node that has started.
    """
    ir = state.ir
    events = [e.payload for e in sim.distinct()]
    fired = {p.timer_id for p in events if isinstance(p, TimerFired)}
    finished: set[str] = set()  # nodes that completed or were skipped, so far
    for payload in events:
        if isinstance(payload, NodeCompleted | NodeSkipped):
            finished.add(payload.node_id)
        if not isinstance(payload, NodeScheduled):
            continue
        if payload.attempt > 1:
            timer = f"run-1:{payload.node_id}:{payload.iteration}:{payload.attempt - 1}:retry"
            assert timer in fired
        elif payload.iteration == 0 and payload.node_id in ir.nodes:
            inputs = {e.source for e in ir.incoming[payload.node_id]}
            done = inputs & finished
            assert done or not inputs if ir.nodes[payload.node_id].join == "any" else done == inputs


def check_replays(sim: Simulation, state: RunState) -> None:
    """Folding the log into a fresh state rebuilds the live state; so does folding it
    with every event doubled (the second copy emits nothing); and folding the whole
    log once more into the result changes nothing and emits nothing."""
    live = canonical(state)
    assert canonical(replayed(sim.log)) == live
    rebuilt = None
    for event in sim.log:
        rebuilt, _ = fold(rebuilt, event)
        rebuilt, again = fold(rebuilt, event)
        assert again == []
    assert canonical(rebuilt) == live
    for event in sim.log:
        assert fold(rebuilt, event)[1] == []
    assert canonical(rebuilt) == live


@PROPERTY_SETTINGS
@given(scenarios())
def test_every_run_terminates_scheduling_each_instance_at_most_once(scenario):
    sim, state = scenario.play()
    check_terminates_once(sim, state)
    check_scheduled_once_within_bounds(sim, state)
    check_causes(sim, state)
    check_outputs(sim, state)
    check_end_state(sim, state)


@PROPERTY_SETTINGS
@given(scenarios())
def test_folding_the_log_again_or_twice_gives_the_same_state(scenario):
    sim, state = scenario.play()
    check_replays(sim, state)
