"""Forks with edits and run diffs through the API of a real embedded server with
authentication on: what runs again is asserted by the fork's events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.auth.conftest import Server, finished, serving
from tests.fork.workflows import BEFORE_JOIN, FORKABLE, last_completion, scheduled


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with serving(tmp_path / "data") as running:
        yield running


async def _events(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/runs/{run_id}/events", params={"limit": 10000})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _parent(client: httpx.AsyncClient) -> tuple[str, int]:
    """A finished run of FORKABLE (x = 1) and the event after which a..d had completed."""
    submitted = await client.post("/api/v1/runs", json={"definition": FORKABLE, "inputs": {"x": 1}})
    run_id = submitted.json()["run_id"]
    assert (await finished(client, run_id))["output"] == [2, 2]
    return run_id, last_completion(await _events(client, run_id), BEFORE_JOIN)


async def _fork(client: httpx.AsyncClient, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"/api/v1/runs/{run_id}/replay", json=body)
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def test_changed_inputs_rerun_only_the_nodes_they_affect(server: Server) -> None:
    async with await server.as_("ann", "operator") as ann:
        parent, middle = await _parent(ann)
        body = {"from_event": middle, "inputs_patch": {"x": 5}, "reason": "try x=5"}
        accepted = await _fork(ann, parent, body)
        assert (accepted["seeded_nodes"], accepted["rerun_nodes"]) == (["b", "c"], ["a", "d"])
        forked = await finished(ann, accepted["run_id"])
        assert (forked["status"], forked["output"]) == ("completed", [2, 10])
        events = await _events(ann, accepted["run_id"])
        assert scheduled(events) == ["a", "d", "j"]  # b and c were carried over
        submitted = events[0]["data"]
        assert submitted["inputs"] == {"x": 5}
        assert submitted["checkpoint"] == {
            "run_id": parent,
            "from_event": middle,
            "outputs": {"b": {"k": 1}, "c": 2},
            "edits": {"rerun": ["a", "d"], "inputs_patch": {"x": 5}, "reason": "try x=5"},
        }
        assert events[0]["actor"] == "ann"

        # Replacing the inputs with equal ones changes nothing: all four are carried.
        same = await _fork(ann, parent, {"from_event": middle, "inputs": {"x": 1}})
        assert (same["seeded_nodes"], same["rerun_nodes"]) == (["a", "b", "c", "d"], [])


async def test_a_definition_patch_reruns_the_changed_node_and_what_follows(
    server: Server,
) -> None:
    async with await server.as_("ann", "operator") as ann:
        parent, _ = await _parent(ann)
        end = (await _events(ann, parent))[-1]["offset"]  # after the run completed
        patch = [{"op": "replace", "path": "/nodes/2/config/expr", "value": ".nodes.b.k + 100"}]
        accepted = await _fork(ann, parent, {"from_event": end, "definition_patch": patch})
        assert accepted["rerun_nodes"] == ["c", "j"]
        forked = await finished(ann, accepted["run_id"])
        assert forked["output"] == [101, 2]
        events = await _events(ann, accepted["run_id"])
        assert scheduled(events) == ["c", "j"]
        assert events[0]["data"]["definition"]["nodes"][2]["config"]["expr"] == ".nodes.b.k + 100"
        assert events[0]["data"]["checkpoint"]["edits"]["definition_patch"] == patch


async def test_a_patch_that_breaks_the_definition_is_refused_naming_the_path(
    server: Server,
) -> None:
    async with await server.as_("ann", "operator") as ann:
        parent, middle = await _parent(ann)
        before = len((await ann.get("/api/v1/runs")).json()["items"])

        missing = [{"op": "replace", "path": "/nodes/9/type", "value": "noop"}]
        refused = await ann.post(
            f"/api/v1/runs/{parent}/replay",
            json={"from_event": middle, "definition_patch": missing},
        )
        assert refused.status_code == 422
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert problem["type"].endswith("/invalid-edit")
        assert problem["errors"][0]["path"] == "/definition_patch/0"

        dangling = [{"op": "add", "path": "/edges/-", "value": {"from": "a", "to": "nope"}}]
        invalid = await ann.post(
            f"/api/v1/runs/{parent}/replay", json={"definition_patch": dangling}
        )
        assert invalid.status_code == 422
        assert invalid.json()["type"].endswith("/invalid-workflow")
        assert [e["path"] for e in invalid.json()["errors"]] == ["/edges/4/to"]

        bad_inputs = await ann.post(
            f"/api/v1/runs/{parent}/replay",
            json={"inputs_patch": [{"op": "remove", "path": "/nope"}]},
        )
        assert bad_inputs.status_code == 422
        assert bad_inputs.json()["errors"][0]["path"] == "/inputs_patch/0"
        assert len((await ann.get("/api/v1/runs")).json()["items"]) == before  # none made


async def test_diff_of_a_fork_and_its_parent(server: Server) -> None:
    async with await server.as_("ann", "operator") as ann:
        parent, middle = await _parent(ann)
        patch = [{"op": "replace", "path": "/nodes/2/config/expr", "value": ".nodes.b.k + 100"}]
        body = {"from_event": middle, "inputs_patch": {"x": 5}, "definition_patch": patch}
        fork_id = (await _fork(ann, parent, body))["run_id"]
        await finished(ann, fork_id)

        response = await ann.get(f"/api/v1/runs/{parent}/diff/{fork_id}")
        assert response.status_code == 200, response.text
        diff = response.json()
        assert diff["identical"] is False
        assert diff["a"]["run_id"] == parent
        assert diff["a"]["fork"] is None
        assert diff["b"]["fork"]["run_id"] == parent
        assert diff["b"]["fork"]["from_event"] == middle
        assert diff["definition"]["patch"] == patch
        assert (
            "-    expr: .nodes.b.k + 1\n+    expr: .nodes.b.k + 100" in diff["definition"]["diff"]
        )
        assert diff["inputs"]["equal"] is False
        assert '+  "x": 5' in diff["inputs"]["diff"]
        nodes = {n["node_id"]: n for n in diff["nodes"]}
        assert list(nodes) == ["a", "b", "c", "d", "j"]
        assert nodes["b"]["b"]["carried_from"] == parent
        assert nodes["b"]["output_equal"]
        assert nodes["b"]["a"]["carried_from"] is None
        assert not nodes["d"]["output_equal"]
        assert "+10" in nodes["d"]["output_diff"]
        assert all(n["status_equal"] for n in nodes.values())
        assert diff["output"]["equal"] is False

        itself = (await ann.get(f"/api/v1/runs/{parent}/diff/{parent}")).json()
        assert itself["identical"] is True
        assert itself["definition"]["diff"] == ""
        assert itself["definition"]["patch"] == []


async def test_a_huge_output_is_cut_in_the_diff(server: Server) -> None:
    big = {
        "name": "big",
        "nodes": [{"id": "a", "type": "transform", "config": {"expr": ".inputs.s"}}],
    }
    async with await server.as_("ann", "operator") as ann:
        runs = []
        for letter in "xy":
            submitted = await ann.post(
                "/api/v1/runs", json={"definition": big, "inputs": {"s": letter * 100_000}}
            )
            runs.append(submitted.json()["run_id"])
            await finished(ann, runs[-1])
        diff = (await ann.get(f"/api/v1/runs/{runs[0]}/diff/{runs[1]}")).json()
        assert diff["truncated"] is True
        assert "… (truncated: " in diff["nodes"][0]["output_diff"]
        assert len(diff["nodes"][0]["output_diff"]) < 50_000


async def test_another_tenants_run_is_not_found_on_either_side(server: Server) -> None:
    acme = await server.as_("ann", "operator", tenant="acme")
    beta = await server.as_("boss", "admin", tenant="beta")
    async with acme, beta:
        mine = (await acme.post("/api/v1/runs", json={"definition": FORKABLE})).json()["run_id"]
        theirs = (await beta.post("/api/v1/runs", json={"definition": FORKABLE})).json()["run_id"]
        await finished(acme, mine)
        await finished(beta, theirs)
        unknown = (await beta.get("/api/v1/runs/run_doesnotexist/diff/x")).json()
        for path in (f"/api/v1/runs/{mine}/diff/{theirs}", f"/api/v1/runs/{theirs}/diff/{mine}"):
            response = await beta.get(path)
            assert response.status_code == 404, (path, response.text)
            assert response.json()["type"] == unknown["type"]
            assert response.json()["detail"] == f"no run {mine!r}"
        assert (await beta.get(f"/api/v1/runs/{theirs}/diff/{theirs}")).status_code == 200
        forked = await beta.post(f"/api/v1/runs/{mine}/replay", json={"inputs": {"x": 2}})
        assert forked.status_code == 404
