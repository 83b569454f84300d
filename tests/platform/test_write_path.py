"""One write path: every command goes through the application layer, which turns it
into events; routers only translate HTTP; a fork is what the fold had built."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aob.events.types import NodeCompleted, NodeFailed, PatchApplied, PatchProposed
from aob.platform.problems import Problem
from aob.platform.replay import Logged, fork, logged
from aob.platform.settings import Settings
from tests.coordinator.simulate import Simulation, fail
from tests.support.api import Aob, running
from tests.support.source import parse_source

PLATFORM = Path(__file__).parents[2] / "platform"
# The application layer: the only modules that append to the log for a command.
APPLICATION_LAYER = {"commands.py", "approvals.py"}

LOOP: dict[str, Any] = {
    "name": "loop",
    "nodes": [
        {"id": "start", "type": "noop", "config": {"output": 2}},
        {"id": "tick", "type": "work"},
        {"id": "done", "type": "noop"},
    ],
    "edges": [
        {"from": "start", "to": "tick"},
        {"from": "tick", "to": "tick", "loop": {"max_iterations": 2}},
        {"from": "tick", "to": "done"},
    ],
}


def _appends_to_the_log(path: Path) -> list[int]:
    """Lines of `path` that call `.append(...)` on a log (`log.append`, `_append`)."""
    lines = []
    for node in ast.walk(parse_source(path)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "append":
            owner = ast.unparse(func.value)
            if owner.endswith("log") or owner.endswith(".log"):
                lines.append(node.lineno)
        elif isinstance(func, ast.Name) and func.id in ("_append", "record_events"):
            lines.append(node.lineno)
    return lines


def test_only_the_application_layer_appends_events() -> None:
    writers = {
        str(path.relative_to(PLATFORM)): lines
        for path in sorted(PLATFORM.rglob("*.py"))
        if (lines := _appends_to_the_log(path))
    }
    assert set(writers) <= APPLICATION_LAYER, writers
    assert "commands.py" in writers  # the check finds what it looks for


def test_routers_import_nothing_that_writes_events() -> None:
    """Routers build no events: they neither encode events nor make event ids (they
    may decode what they show)."""
    for path in sorted((PLATFORM / "api").glob("*.py")):
        tree = parse_source(path)
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        assert not imported & {"encode", "new_event_id", "derived_event_id", "Append"}, path


def _history(simulation: Simulation) -> list[Logged]:
    return [Logged(offset, event) for offset, event in enumerate(simulation.log)]


def test_a_fork_is_the_folds_state_at_the_event() -> None:
    """The definition as the fold materialized it (patches applied so far), the outputs
    of the nodes it had completed, none inside a loop and none of a failed node."""
    extra = {"id": "extra", "type": "work"}
    simulation = Simulation(LOOP, inputs={"a": 1}, script={"extra": fail("x")})
    simulation.run_until(lambda s: bool(s.payloads(NodeCompleted)) and s.now > 0)
    simulation.append(
        PatchProposed("run-1", "p1", [{"op": "add", "path": "/nodes/-", "value": extra}])
    )
    simulation.run()
    history = _history(simulation)
    proposed_at = next(e.offset for e in history if isinstance(e.event.payload, PatchProposed))
    patched_at = next(e.offset for e in history if isinstance(e.event.payload, PatchApplied))

    before = fork("run-1", history, proposed_at - 1)
    assert before.definition == LOOP
    at_patch = fork("run-1", history, patched_at)
    assert at_patch.definition["nodes"][-1] == extra
    assert "tick" not in at_patch.outputs  # inside a loop: it reruns whole
    [started] = [c.output for c in simulation.payloads(NodeCompleted) if c.node_id == "start"]
    assert at_patch.outputs["start"] == started
    checkpoint = at_patch.checkpoint("r")
    assert (at_patch.inputs, checkpoint["from_event"]) == ({"a": 1}, patched_at)
    at_end = fork("run-1", history, len(history) - 1)
    assert simulation.payloads(NodeFailed)
    assert "extra" not in at_end.outputs  # failed: runs again
    assert set(at_end.outputs) == {"start"}  # the run failed before done ran
    from_start = fork("run-1", history, None).checkpoint("run-1")
    assert from_start == {"run_id": "run-1", "from_event": None, "outputs": {}}
    with pytest.raises(Problem, match=f"has events 0 to {len(history) - 1}, not 999"):
        fork("run-1", history, 999)


def test_a_timeline_row_is_the_event_it_shows() -> None:
    simulation = Simulation(LOOP).start()
    event = simulation.log[0]
    row = {
        "topic": "aob.runs",
        "offset": 7,
        "event_id": event.event_id,
        "key": event.key,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "actor": event.actor,
        "trace_id": event.trace_id,
        "causation_id": event.causation_id,
        "data": {
            "run_id": "run-1",
            "definition": LOOP,
            "inputs": None,
            "known_types": ["work", "noop"],
            "workflow_id": None,
            "version": None,
            "tag": None,
            "checkpoint": None,
            "tenant": None,
        },
    }
    assert logged(row).offset == 7
    assert logged(row).event.payload.definition == LOOP  # type: ignore[union-attr]


@pytest.fixture
async def aob(tmp_path: Path) -> AsyncIterator[Aob]:
    async with running(Settings(data_dir=tmp_path / "data"), Aob) as client:
        yield client


PATCHED: dict[str, Any] = {
    "name": "patched",
    "nodes": [
        {"id": "a", "type": "noop", "config": {"output": 1}},
        {"id": "b", "type": "transform", "config": {"expr": ".nodes.a + 1"}},
    ],
    "edges": [{"from": "a", "to": "b"}],
    "output": ".nodes",
}


async def test_a_replay_through_the_api_forks_from_the_folded_state(aob: Aob) -> None:
    run_id = await aob.submit(PATCHED)
    await aob.finished(run_id)
    events = await aob.events(run_id)
    after_a = next(
        e["offset"] for e in events if e["type"] == "NodeCompleted" and e["data"]["node_id"] == "a"
    )
    response = await aob.client.post(f"/api/v1/runs/{run_id}/replay", json={"from_event": after_a})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["seeded_nodes"] == ["a"]
    fork_run = await aob.finished(accepted["run_id"])
    assert fork_run["status"] == "completed"
    assert fork_run["output"] == {"a": 1, "b": 2}
    [submitted] = await aob.events_of(accepted["run_id"], "RunSubmitted")
    assert submitted["checkpoint"]["outputs"] == {"a": 1}


async def test_commands_record_who_did_what(aob: Aob) -> None:
    """Tool registrations and cancels go through the one writer: actor and trace kept."""
    response = await aob.client.post(
        "/api/v1/tools",
        json={"name": "twice", "steps": [{"op": "jq_transform", "expr": ". * 2"}]},
        headers={"X-Aob-Actor": "tooler", "X-Trace-Id": "trace-tool"},
    )
    assert response.status_code == 201, response.text
    listed = (await aob.client.get("/api/v1/tools")).json()["items"]
    assert [t["name"] for t in listed] == ["twice"]
    run_id = await aob.submit({"name": "wait", "nodes": [{"id": "h", "type": "hitl"}]})
    response = await aob.client.post(
        f"/api/v1/runs/{run_id}/cancel",
        json={"reason": "stop"},
        headers={"X-Aob-Actor": "canceller", "X-Trace-Id": "trace-cancel"},
    )
    assert response.status_code == 202, response.text
    await aob.finished(run_id)
    [asked] = [e for e in await aob.events(run_id) if e["type"] == "RunCancelRequested"]
    assert (asked["actor"], asked["trace_id"]) == ("canceller", "trace-cancel")
