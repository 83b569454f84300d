"""Node types and their configs through the API, on every backend: a misspelled type is
warned about at validation and submission and its skip names the type meant; a bad
config is refused at both, with its path; the served schema carries every config."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import Backend, nodes_of

PROBLEM = "application/problem+json"
SUGGESTION = "unknown node type 'htpp' (did you mean 'http'?)"


def order(charge_type: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "order",
        "output": ".nodes.receipt",
        "nodes": [
            {"id": "charge", "type": charge_type, "config": config},
            {"id": "receipt", "type": "noop", "config": {"output": "sent"}},
        ],
        "edges": [{"from": "charge", "to": "receipt"}],
    }


TYPO = order("htpp", {"url": "http://127.0.0.1:9/charge", "method": "POST"})
BAD_HTTP = order("http", {"url": "ftp://files", "retries": {"maxx": 2}})


async def test_a_misspelled_type_is_warned_about_and_its_skip_names_the_type_meant(
    backend: Backend,
) -> None:
    validated = await backend.client.post("/api/v1/workflows/validate", json={"definition": TYPO})
    assert validated.status_code == 200
    [warning] = validated.json()["warnings"]
    assert warning["path"] == "/nodes/0/type"
    assert warning["message"].startswith(SUGGESTION)

    submitted = await backend.client.post("/api/v1/runs", json={"definition": TYPO})
    assert submitted.status_code == 202
    assert [w["path"] for w in submitted.json()["warnings"]] == ["/nodes/0/type"]

    run = await backend.wait(submitted.json()["run_id"])
    assert run["status"] == "completed"  # skipped with a warning, as the seed wants
    assert run["output"] == "sent"
    nodes = nodes_of(run)
    assert nodes["charge"]["status"] == "skipped"
    assert nodes["charge"]["skip_reason"] == SUGGESTION
    skips = [e for e in await backend.events(run["run_id"]) if e["type"] == "NodeSkipped"]
    assert [(e["data"]["reason"], e["data"]["warning"]) for e in skips] == [(SUGGESTION, True)]


async def test_a_stored_workflow_with_the_typo_warns_when_submitted_by_tag(
    backend: Backend,
) -> None:
    created = await backend.client.post("/api/v1/workflows", json={"definition": TYPO})
    assert created.status_code == 201, created.text
    submitted = await backend.client.post("/api/v1/runs", json={"tag": "order"})
    assert submitted.status_code == 202
    [warning] = submitted.json()["warnings"]
    assert warning["message"].startswith(SUGGESTION)


async def test_a_bad_http_config_is_refused_at_validate_and_submit_with_its_paths(
    backend: Backend,
) -> None:
    for path in ("/api/v1/workflows/validate", "/api/v1/runs"):
        response = await backend.client.post(path, json={"definition": BAD_HTTP})
        assert response.status_code == 422, path
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["errors"] == [
            {
                "path": "/nodes/0/config/retries",
                "message": "'maxx' was unexpected: did you mean 'max'?",
            },
            {
                "path": "/nodes/0/config/url",
                "message": "'ftp://files' is not an http:// or https:// URL or a {{ jq }} template",
            },
        ]
    assert (await backend.client.get("/api/v1/runs")).json()["items"] == []


async def test_a_clean_definition_gets_no_warnings(backend: Backend) -> None:
    clean = order("http", {"url": "https://payments.example.com/charges"})
    validated = await backend.client.post("/api/v1/workflows/validate", json={"definition": clean})
    assert validated.json() == {"valid": True}


async def test_the_served_schema_describes_every_config_and_output(backend: Backend) -> None:
    schema = (await backend.client.get("/api/v1/schema/workflow")).json()
    http = schema["$defs"]["config.http"]
    assert http["required"] == ["url"]
    assert set(http["x-output"]["properties"]) == {
        "status",
        "headers",
        "body",
        "elapsed_ms",
        "attempts",
    }
