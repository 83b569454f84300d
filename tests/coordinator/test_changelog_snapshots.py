"""Run-state snapshots, the values of the coordinator's changelog.

A state restored from its snapshot must equal the state, and must fold every later
event exactly as the live state does (same decisions, same ids): that is what lets
another process take a run over from the changelog.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from aob.events.types import ApprovalRequested, Event, PatchProposed, PatchReviewed
from aob.projections.coordinator.fold import fold
from aob.projections.coordinator.state import NodeStatus, RunState, RunStatus, restore, snapshot
from tests.coordinator.simulate import HANG, Chaos, Outcome, Simulation, complete, fail

# Retries (timers), a timeout, a dead branch, an unknown node type, an any-join, a
# bounded loop: every part of the state gets something to hold.
WORKFLOW: dict[str, Any] = {
    "name": "snapshot-everything",
    "patch_policy": "review",
    "nodes": [
        {"id": "start", "type": "work"},
        {"id": "flaky", "type": "work", "retry": {"max_attempts": 3, "initial_backoff_ms": 5}},
        {
            "id": "slow",
            "type": "work",
            "timeout_ms": 50,
            "retry": {"max_attempts": 2, "initial_backoff_ms": 5},
        },
        {"id": "dead", "type": "work"},
        {"id": "mystery", "type": "no-such-type"},
        {"id": "either", "type": "work", "join": "any"},
        {"id": "body", "type": "work"},
        {"id": "end", "type": "work"},
    ],
    "edges": [
        {"from": "start", "to": "flaky"},
        {"from": "start", "to": "slow"},
        {"from": "start", "to": "dead", "when": "false"},
        {"from": "start", "to": "mystery"},
        {"from": "flaky", "to": "either"},
        {"from": "dead", "to": "either"},
        {"from": "either", "to": "body"},
        {"from": "body", "to": "either", "loop": {"max_iterations": 2}},
        {"from": "body", "to": "end"},
        {"from": "slow", "to": "end"},
        {"from": "mystery", "to": "end"},
    ],
}
SCRIPT: dict[str, Outcome | list[Outcome]] = {
    "flaky": [fail(), fail(), complete()],
    "slow": [HANG, complete(duration_ms=10)],
    "end": complete(duration_ms=20),
}


def simulated_log(chaos: Chaos | None) -> list[Event]:
    """A run's log with an approval and a patch dropped in while it runs."""
    sim = Simulation(WORKFLOW, script=SCRIPT, inputs={"x": [1, 2.5, None]}, chaos=chaos)
    sim.start()
    sim.append(ApprovalRequested(sim.run_id, "ap-1", "start", 0, "ok?"))
    sim.run_until(lambda s: s.current.nodes["start"].status is NodeStatus.COMPLETED)
    added = {"id": "extra", "type": "work"}
    operations = [
        {"op": "add", "path": "/nodes/-", "value": added},
        {"op": "add", "path": "/edges/-", "value": {"from": "start", "to": "extra"}},
    ]
    # An agent's patch waits for review (the workflow's patch_policy), then applies.
    sim.append(PatchProposed(sim.run_id, "p1", operations, "needs extra", node_id="start"))
    sim.append(PatchReviewed(sim.run_id, "p1", "approve", "alice"))
    sim.run()
    return sim.log


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_a_restored_state_folds_every_later_event_as_the_live_one(seed: int | None) -> None:
    chaos = None if seed is None else Chaos(seed, redeliver=0.2, duplicate=0.2)
    log = simulated_log(chaos)
    live: RunState | None = None
    for event in log:
        if live is None:
            live, _ = fold(live, event)
            continue
        restored = restore(snapshot(live))
        assert restored == live
        copy, copy_emitted = fold(restored, event)
        live, emitted = fold(live, event)
        assert (copy, copy_emitted) == (live, emitted)
    assert live is not None
    assert not live.pending_patches
    assert live.revision == 1  # reviewed, then applied: the restored IR is the patched one
    if chaos is None:  # the scenario reached what it means to test
        assert live.status is RunStatus.COMPLETED
        assert live.loop_counts
        assert live.timers
        assert "extra" in live.ever_started


def test_a_snapshot_holds_every_field_of_the_state_but_the_compiled_workflow() -> None:
    state = fold(None, simulated_log(None)[0])[0]
    assert state is not None
    document = json.loads(snapshot(state))
    assert set(document) == {f.name for f in dataclasses.fields(RunState)} - {"ir"} | {"v"}


def test_a_snapshot_of_another_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version 3"):
        restore(b'{"v": 3, "run_id": "r"}')


def test_a_version_1_snapshot_restores_with_the_fields_it_predates() -> None:
    state = fold(None, simulated_log(None)[0])[0]
    assert state is not None
    document = json.loads(snapshot(state))
    for newer in ("tenant", "output_refs", "awaiting", "verdicts", "output_requests"):
        del document[newer]
    restored = restore(json.dumps({**document, "v": 1}).encode())
    assert (restored.awaiting, restored.output_refs, restored.tenant) == ({}, {}, None)
