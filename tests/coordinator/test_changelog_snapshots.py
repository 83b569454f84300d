"""Run-state snapshots, whole and in parts (the values of the coordinator's changelog).

A state restored from its snapshot must equal the state, and must fold every later
event exactly as the live state does (same decisions, same ids): that is what lets
another process take a run over from the changelog.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from aob.events.log.port import Append, Record
from aob.events.types import (
    ApprovalRequested,
    Event,
    NodeCompleted,
    PatchProposed,
    PatchReviewed,
    RunSubmitted,
)
from aob.projections.coordinator.fold import fold
from aob.projections.coordinator.state import (
    DEFINITION_FIELDS,
    HISTORY_FIELDS,
    OUTPUT_FIELDS,
    SUBMISSION_FIELDS,
    NodeStatus,
    RunState,
    RunStatus,
    core_snapshot,
    definition_snapshot,
    history_snapshot,
    restore,
    snapshot,
    submission_snapshot,
)
from aob.projections.runtime.changelog import RunRecord, read_partition, run_entries
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


# --- split snapshots: the changelog's parts -----------------------------------------------


class MemoryChangelog:
    """The changelog topic in a list (one partition): what `read_partition` reads."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def append(self, entries: list[Append]) -> None:
        for entry in entries:
            offset = len(self.records)
            self.records.append(Record(entry.topic, 0, offset, entry.key, entry.value, 0))

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 500
    ) -> list[Record]:
        return self.records[offset : offset + max_records]


def test_the_parts_hold_every_field_of_the_state_but_the_compiled_workflow() -> None:
    state = fold(None, simulated_log(None)[0])[0]
    assert state is not None
    core = set(json.loads(core_snapshot(state, [], {}))) - {"v"}
    parts = SUBMISSION_FIELDS | DEFINITION_FIELDS | OUTPUT_FIELDS | HISTORY_FIELDS
    assert set(json.loads(submission_snapshot(state))) == SUBMISSION_FIELDS
    assert set(json.loads(definition_snapshot(state))) == DEFINITION_FIELDS
    assert set(json.loads(history_snapshot([], {}))) == HISTORY_FIELDS
    fields = {f.name for f in dataclasses.fields(RunState)} - {"ir"}
    # The core holds the recent history too (seen, verdicts); all else is in one place.
    assert core | parts == fields
    assert core & parts == HISTORY_FIELDS


@pytest.mark.parametrize("seed", [None, 1, 2])
async def test_a_state_restored_from_its_parts_folds_every_later_event_as_the_live_one(
    seed: int | None,
) -> None:
    chaos = None if seed is None else Chaos(seed, redeliver=0.2, duplicate=0.2)
    log = simulated_log(chaos)
    changelog = MemoryChangelog()
    record = RunRecord()
    live: RunState | None = None
    for event in log:
        before = live
        live, emitted = fold(live, event)
        assert live is not None
        if before is None or event.event_id not in before.seen:
            record.note_seen([event.event_id, *(e.event_id for e in emitted)])
        changelog.append(run_entries(live, record, 1))
        restored = (await read_partition(changelog, 0)).states[live.run_id]  # type: ignore[arg-type]
        assert restored == live
    assert live is not None
    assert record.sealed > 0  # the history went to chunks: the core stays small
    assert live.revision == 1  # the definition part was written, and read back


def test_a_runs_writes_per_batch_follow_the_batch_not_the_runs_length() -> None:
    nodes = [{"id": f"n{i}", "type": "work"} for i in range(60)]
    edges = [{"from": f"n{i}", "to": f"n{i + 1}"} for i in range(59)]
    definition = {"name": "long", "nodes": nodes, "edges": edges}
    run = "r-long"
    state, _ = fold(None, Event("e-0", run, 1, RunSubmitted(run, definition, {}, ["work"])))
    assert state is not None
    record = RunRecord()
    written: list[int] = []
    for i in range(60):
        output = {"blob": "x" * 15_000, "i": i}
        event = Event(f"e-{i + 1}", run, 2 + i, NodeCompleted(run, f"n{i}", 0, 1, output))
        state, emitted = fold(state, event)
        assert state is not None
        record.note_seen([event.event_id, *(e.event_id for e in emitted)])
        if not state.is_finished:
            written.append(sum(len(a.value) for a in run_entries(state, record, 1)))
    # A whole snapshot of the run ends near 1 MB; a batch writes one output and the core.
    assert len(snapshot(state)) > 900_000
    assert max(written[1:]) < 15_000 + 8_000
