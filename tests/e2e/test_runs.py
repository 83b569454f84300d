"""End-to-end behaviour of runs through the HTTP API, against every backend."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from tests.e2e.conftest import Backend, nodes_of


def t(node_id: str, expr: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "transform", "config": {"expr": expr}, **extra}


def node(node_id: str, node_type: str, **config: Any) -> dict[str, Any]:
    return {"id": node_id, "type": node_type, "config": config}


def e(source: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"from": source, "to": target, **extra}


def wf(
    nodes: list[dict[str, Any]], edges: Sequence[dict[str, Any]] = (), **extra: Any
) -> dict[str, Any]:
    return {"name": "e2e", "nodes": nodes, "edges": list(edges), **extra}


def statuses(run: dict[str, Any]) -> dict[str, str]:
    return {node_id: n["status"] for node_id, n in nodes_of(run).items()}


async def test_submit_runs_to_completion_with_outputs(backend: Backend) -> None:
    definition = wf(
        [t("a", ".inputs.x + 1"), t("b", ".nodes.a * 2")], [e("a", "b")], output=".nodes.b"
    )
    run = await backend.complete(definition, {"x": 20})
    assert run["status"] == "completed"
    assert run["output"] == 42
    assert statuses(run) == {"a": "completed", "b": "completed"}
    assert nodes_of(run)["b"]["output"] == 42


async def test_and_join_waits_for_every_input(backend: Backend) -> None:
    definition = wf(
        [node("slow", "sleep", ms=150), t("fast", "1"), t("join", "[.nodes.slow, .nodes.fast]")],
        [e("slow", "join"), e("fast", "join")],
        output=".nodes.join",
    )
    run = await backend.complete(definition)
    assert run["output"] == [{"slept_ms": 150}, 1]
    join, slow = nodes_of(run)["join"], nodes_of(run)["slow"]
    assert join["scheduled_at"] >= slow["finished_at"]


async def test_any_join_runs_once_on_the_first_input(backend: Backend) -> None:
    definition = wf(
        [
            node("slow", "sleep", ms=300),
            node("fast", "sleep", ms=0),
            node("first", "flaky"),
        ],
        [e("slow", "first"), e("fast", "first")],
    )
    definition["nodes"][2]["join"] = "any"
    run_id = await backend.submit(definition)
    run = await backend.wait(run_id)
    assert run["status"] == "completed"
    assert nodes_of(run)["first"]["scheduled_at"] < nodes_of(run)["slow"]["finished_at"]
    assert backend.sink.of_run(run_id) == {("slow", 0, 1): 1, ("fast", 0, 1): 1, ("first", 0, 1): 1}


async def test_conditional_branches_and_dead_path_elimination(backend: Backend) -> None:
    definition = wf(
        [
            t("score", ".inputs.score"),
            t("high", '"high"'),
            t("high2", '"high again"'),
            t("low", '"low"'),
            t("report", "[.nodes.high2, .nodes.low]"),
        ],
        [
            e("score", "high", when=".nodes.score >= 50"),
            e("high", "high2"),
            e("score", "low", when=".nodes.score < 50"),
            e("high2", "report"),
            e("low", "report"),
        ],
        output=".nodes.report",
    )
    high = await backend.complete(definition, {"score": 80})
    low = await backend.complete(definition, {"score": 10})
    assert high["output"] == ["high again", None]
    assert statuses(high)["low"] == "skipped"
    assert low["output"] == [None, "low"]
    assert statuses(low) | {} == {
        "score": "completed",
        "high": "skipped",
        "high2": "skipped",
        "low": "completed",
        "report": "completed",
    }


async def test_a_branch_with_no_taken_edge_skips_its_whole_subtree(backend: Backend) -> None:
    definition = wf(
        [t("a", "1"), t("b", "2"), t("c", "3")],
        [e("a", "b", when="false"), e("b", "c")],
    )
    run = await backend.complete(definition)
    assert run["status"] == "completed"
    assert statuses(run) == {"a": "completed", "b": "skipped", "c": "skipped"}


async def test_bounded_loop_repeats_until_its_condition_is_false(backend: Backend) -> None:
    definition = wf(
        [t("start", "3"), t("tick", "(.nodes.tick // .nodes.start) - 1"), t("done", ".nodes.tick")],
        [
            e("start", "tick"),
            e("tick", "tick", when=".nodes.tick > 0", loop={"max_iterations": 10}),
            e("tick", "done"),
        ],
        output=".nodes.done",
    )
    run = await backend.complete(definition)
    assert run["status"] == "completed"
    assert run["output"] == 0
    assert nodes_of(run)["tick"]["iteration"] == 2


async def test_loop_stops_at_its_bound(backend: Backend) -> None:
    definition = wf(
        [t("tick", "(.nodes.tick // 0) + 1")],
        [e("tick", "tick", when="true", loop={"max_iterations": 4})],
        output=".nodes.tick",
    )
    run = await backend.complete(definition)
    assert run["output"] == 5  # the first pass and four repeats


async def test_failed_attempts_are_retried_with_backoff(backend: Backend) -> None:
    retry = {"max_attempts": 3, "initial_backoff_ms": 50}
    definition = wf([{**node("f", "flaky", fail_attempts=2), "retry": retry}], output=".nodes.f")
    run_id = await backend.submit(definition)
    run = await backend.wait(run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"attempt": 3}
    assert backend.sink.of_run(run_id) == {("f", 0, 1): 1, ("f", 0, 2): 1, ("f", 0, 3): 1}
    types = [ev["type"] for ev in await backend.events(run_id)]
    assert types.count("TimerSet") == 2
    assert types.count("TimerFired") == 2


async def test_retries_exhausted_fail_the_run_naming_the_node(backend: Backend) -> None:
    retry = {"max_attempts": 2, "initial_backoff_ms": 10}
    definition = wf(
        [{**node("f", "flaky", fail_attempts=5), "retry": retry}, t("after", "1")],
        [e("f", "after")],
    )
    run = await backend.complete(definition)
    assert run["status"] == "failed"
    assert run["error_node_id"] == "f"
    assert "after 2 attempts" in run["error"]
    assert "planned failure" in run["error"]
    assert "after" not in statuses(run)  # never scheduled


async def test_attempt_timeout_fails_the_node(backend: Backend) -> None:
    definition = wf([{**node("s", "sleep", ms=5000), "timeout_ms": 100}])
    run = await backend.complete(definition)
    assert run["status"] == "failed"
    assert "timed out after 100 ms" in run["error"]


async def test_cancel_stops_a_running_run_and_is_refused_after(backend: Backend) -> None:
    definition = wf([node("s", "gate"), t("after", "1")], [e("s", "after")])
    run_id = await backend.submit(definition)
    await backend.wait_node(run_id, "s", "running")
    response = await backend.client.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "test"})
    assert response.status_code == 202
    run = await backend.wait(run_id)
    assert run["status"] == "cancelled"
    backend.sink.open(run_id, "s")  # its outcome comes after the end: the run stays cancelled
    again = await backend.client.post(f"/api/v1/runs/{run_id}/cancel", json={})
    assert again.status_code == 409
    assert again.json()["run_status"] == "cancelled"


async def test_unknown_node_type_is_skipped_with_a_warning_and_dependents_run(
    backend: Backend,
) -> None:
    definition = wf([node("x", "teleport"), t("after", '"ran"')], [e("x", "after")])
    run = await backend.complete(definition)
    assert run["status"] == "completed"
    x = nodes_of(run)["x"]
    assert x["status"] == "skipped"
    assert x["warning"] is True
    assert "teleport" in x["skip_reason"]
    assert nodes_of(run)["after"]["output"] == "ran"


async def decided_patch(backend: Backend, run_id: str, patch_id: str) -> dict[str, Any]:
    """The patch once the coordinator decided it (the API answers 202 until then)."""
    deadline = asyncio.get_running_loop().time() + 60.0  # a deadline, for a loaded machine
    while asyncio.get_running_loop().time() < deadline:
        response = await backend.client.get(f"/api/v1/runs/{run_id}/patches/{patch_id}")
        if response.status_code == 200 and response.json()["status"] != "proposed":
            return dict(response.json())
        await asyncio.sleep(0.02)
    raise AssertionError(f"patch {patch_id} of run {run_id} was never decided")


async def test_patch_adds_a_node_that_then_runs(backend: Backend) -> None:
    definition = wf([node("s", "gate"), t("a", '"a"')], [e("s", "a")])
    run_id = await backend.submit(definition)
    await backend.wait_node(run_id, "s", "running")
    operations = [
        {"op": "add", "path": "/nodes/-", "value": t("extra", '"patched in"')},
        {"op": "add", "path": "/edges/-", "value": e("a", "extra")},
    ]
    response = await backend.client.post(
        f"/api/v1/runs/{run_id}/patch", json={"operations": operations, "reason": "more"}
    )
    assert response.status_code in (200, 202), response.text
    patch = response.json()
    if response.status_code == 202:  # not decided yet when the API stopped waiting
        patch = await decided_patch(backend, run_id, patch["patch_id"])
    assert patch["status"] == "applied"
    backend.sink.open(run_id, "s")
    run = await backend.wait(run_id)
    assert run["status"] == "completed"
    assert nodes_of(run)["extra"]["output"] == "patched in"
    assert run["revision"] == 1
    assert [n["id"] for n in run["definition"]["nodes"]] == ["s", "a", "extra"]


async def test_patch_rewriting_a_started_node_is_refused(backend: Backend) -> None:
    definition = wf([node("s", "gate", label="first")])
    run_id = await backend.submit(definition)
    await backend.wait_node(run_id, "s", "running")
    operations = [{"op": "replace", "path": "/nodes/0/config/label", "value": "second"}]
    response = await backend.client.post(
        f"/api/v1/runs/{run_id}/patch", json={"operations": operations}
    )
    assert response.status_code == 422
    assert response.json()["errors"]
    backend.sink.open(run_id, "s")
    run = await backend.wait(run_id)
    assert run["status"] == "completed"
    assert run["revision"] == 0


async def test_each_node_executes_exactly_once(backend: Backend) -> None:
    nodes = [node(f"n{i}", "sleep", ms=5) for i in range(6)]
    edges = [e("n0", f"n{i}") for i in range(1, 5)] + [e(f"n{i}", "n5") for i in range(1, 5)]
    run_ids = [await backend.submit(wf(nodes, edges)) for _ in range(10)]
    for run_id in run_ids:
        assert (await backend.wait(run_id))["status"] == "completed"
        assert backend.sink.of_run(run_id) == {(f"n{i}", 0, 1): 1 for i in range(6)}


async def test_timeline_holds_the_whole_history_in_order(backend: Backend) -> None:
    run_id = await backend.submit(wf([t("a", "1"), t("b", "2")], [e("a", "b")]))
    await backend.wait(run_id)
    events = await backend.events(run_id)
    types = [ev["type"] for ev in events]
    assert types[0] == "RunSubmitted"
    assert types[-1] == "RunCompleted"
    assert types.index("NodeCompleted") < types.index("RunCompleted")
    offsets = [ev["offset"] for ev in events]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == len(offsets)
    assert all(ev["key"] == run_id for ev in events)
    later = await backend.client.get(f"/api/v1/runs/{run_id}/events", params={"after": offsets[2]})
    assert [ev["offset"] for ev in later.json()["items"]] == offsets[3:]


async def test_large_outputs_are_stored_once_and_referenced_so_events_stay_small(
    backend: Backend,
) -> None:
    """20 chained nodes with 60 KB outputs: before outputs were referenced, the last
    NodeScheduled copied all of them (1.14 MB) and the run logged 11.4 MB."""
    chain = [t("n0", '"x" * 60000')]
    chain += [t(f"n{i}", f'.nodes.n{i - 1}[1:] + "y"') for i in range(1, 20)]
    edges = [e(f"n{i - 1}", f"n{i}") for i in range(1, 20)]
    definition = wf(chain, edges, output="{length: (.nodes.n19 | length), tail: .nodes.n19[-3:]}")
    run = await backend.complete(definition)
    assert run["status"] == "completed", run.get("error")
    assert run["output"] == {"length": 60000, "tail": "yyy"}
    assert len(nodes_of(run)["n7"]["output"]) == 60000  # the API fetches referenced outputs
    sizes = [len(json.dumps(item)) for item in await backend.events(run["run_id"])]
    assert max(sizes) < 16 * 1024
    assert sum(sizes) < 200 * 1024  # linear in the work: no output is copied
