"""The API around runs: workflows, tags, validation, listing, errors, health, schema."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import Backend

PROBLEM = "application/problem+json"


def definition(name: str = "greet", expr: str = '"hello " + .inputs.who') -> dict[str, Any]:
    return {
        "name": name,
        "nodes": [{"id": "a", "type": "transform", "config": {"expr": expr}}],
        "output": ".nodes.a",
    }


async def create(backend: Backend, doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
    response = await backend.client.post("/api/v1/workflows", json={"definition": doc, **extra})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_workflows_are_versioned_and_tags_move_like_refs(backend: Backend) -> None:
    first = await create(backend, definition())
    second = await create(backend, definition(expr='"hi " + .inputs.who'))
    assert (first["version"], second["version"]) == (1, 2)
    assert second["tag"] == "greet"

    by_tag = await backend.client.post(
        "/api/v1/runs", json={"tag": "greet", "inputs": {"who": "ann"}}
    )
    assert by_tag.status_code == 202
    run = await backend.wait(by_tag.json()["run_id"])
    assert run["output"] == "hi ann"
    assert (run["workflow_id"], run["version"], run["tag"]) == ("greet", 2, "greet")

    moved = await backend.client.post(
        "/api/v1/tags/greet/move", json={"workflow_id": "greet", "version": 1}
    )
    assert moved.status_code == 200
    tags = (await backend.client.get("/api/v1/tags")).json()["items"]
    assert {"tag": "greet", "workflow_id": "greet", "version": 1}.items() <= tags[0].items()
    rerun = await backend.client.post(
        "/api/v1/runs", json={"tag": "greet", "inputs": {"who": "bo"}}
    )
    assert (await backend.wait(rerun.json()["run_id"]))["output"] == "hello bo"

    shown = (await backend.client.get("/api/v1/workflows/greet", params={"version": 2})).json()
    assert shown["definition"]["nodes"][0]["config"]["expr"] == '"hi " + .inputs.who'
    listed = (await backend.client.get("/api/v1/workflows")).json()["items"]
    assert [(w["workflow_id"], w["version"]) for w in listed] == [("greet", 2)]


async def test_run_by_workflow_id_and_version(backend: Backend) -> None:
    await create(backend, definition("pinned"), tag="")
    await create(backend, definition("pinned", expr='"v2"'), tag="")
    response = await backend.client.post(
        "/api/v1/runs", json={"workflow_id": "pinned", "version": 1, "inputs": {"who": "x"}}
    )
    run = await backend.wait(response.json()["run_id"])
    assert run["output"] == "hello x"
    assert (await backend.client.get("/api/v1/tags")).json()["items"] == []


async def test_invalid_definition_lists_every_problem_and_records_nothing(backend: Backend) -> None:
    bad = {
        "name": "bad",
        "nodes": [
            {"id": "a", "type": "transform", "config": {"expr": "."}},
            {"id": "a", "type": "noop"},
            {"id": "b", "type": "transform", "config": {"expr": "map(."}},
        ],
        "edges": [{"from": "a", "to": "nowhere"}, {"from": "b", "to": "b"}],
    }
    for path in ("/api/v1/runs", "/api/v1/workflows", "/api/v1/workflows/validate"):
        response = await backend.client.post(path, json={"definition": bad})
        assert response.status_code == 422, path
        assert response.headers["content-type"] == PROBLEM
        problem = response.json()
        assert problem["type"].endswith("/invalid-workflow")
        paths = {error["path"] for error in problem["errors"]}
        assert {"/nodes/1/id", "/nodes/2/config/expr", "/edges/0/to"} <= paths
        assert any("cycle" in error["message"] for error in problem["errors"])
    assert (await backend.client.get("/api/v1/runs")).json()["items"] == []
    assert (await backend.client.get("/api/v1/workflows")).json()["items"] == []


async def test_validate_accepts_a_good_definition(backend: Backend) -> None:
    response = await backend.client.post(
        "/api/v1/workflows/validate", json={"definition": definition()}
    )
    assert response.status_code == 200
    assert response.json() == {"valid": True}


async def test_bad_requests_get_problem_details(backend: Backend) -> None:
    client = backend.client
    both = await client.post("/api/v1/runs", json={"definition": definition(), "tag": "greet"})
    assert both.status_code == 400
    assert "exactly one" in both.json()["detail"]
    missing_tag = await client.post("/api/v1/runs", json={"tag": "no-such-tag"})
    assert missing_tag.status_code == 404
    not_json = await client.post(
        "/api/v1/runs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    assert not_json.headers["content-type"] == PROBLEM
    unknown = await client.get("/api/v1/runs/run_nope")
    assert unknown.status_code == 404
    assert unknown.json() == {
        "type": "https://aob.dev/problems/not-found",
        "title": "Run not found",
        "status": 404,
        "detail": "no run 'run_nope'",
        "instance": "/api/v1/runs/run_nope",
    }
    too_big = await client.post(
        "/api/v1/runs",
        content=b" " * (3 * 1024 * 1024),
        headers={"content-type": "application/json"},
    )
    assert too_big.status_code == 413
    bad_limit = await client.get("/api/v1/runs", params={"limit": 0})
    assert bad_limit.status_code == 422
    assert bad_limit.json()["errors"][0]["path"] == "/query/limit"
    assert (await client.get("/api/v1/runs")).json()["items"] == []


async def test_list_runs_filters_and_paginates(backend: Backend) -> None:
    ok = definition(expr='"ok"')
    failing = definition(expr='error("boom")')
    ids = [await backend.submit(ok) for _ in range(5)] + [await backend.submit(failing)]
    for run_id in ids:
        await backend.wait(run_id)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await backend.client.get("/api/v1/runs", params=params)).json()
        assert len(page["items"]) <= 2
        seen += [run["run_id"] for run in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))
    failed = (await backend.client.get("/api/v1/runs", params={"status": "failed"})).json()
    assert [run["run_id"] for run in failed["items"]] == [ids[-1]]


async def test_health_schema_and_openapi(backend: Backend) -> None:
    health = (await backend.client.get("/health")).json()
    assert health["status"] == "ok"
    assert set(health["dependencies"]) >= {"event_log", "read_models"}
    assert {"service", "version", "uptime"} <= set(health)
    schema = (await backend.client.get("/api/v1/schema/workflow")).json()
    assert schema["title"] == "aob workflow definition"
    assert "nodes" in schema["required"]
    openapi = (await backend.client.get("/openapi.json")).json()
    assert "/api/v1/runs" in openapi["paths"]
    assert "/api/v1/runs/{run_id}/patch" in openapi["paths"]


async def test_submit_is_durable_before_it_is_acknowledged(backend: Backend) -> None:
    run_id = await backend.submit(definition(), {"who": "d"})
    events = await backend.events(run_id)
    assert events[0]["type"] == "RunSubmitted"
    assert events[0]["data"]["inputs"] == {"who": "d"}
