"""Tools belong to their registrant's tenant: another tenant's callers cannot list,
search or read them, and its runs' agents can neither find nor use them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aob.events.codec import as_logged, decode
from aob.events.types import Event, ToolRegistered
from aob.workers.agent.catalog import ToolCatalog
from tests.agent.harness import agent, call
from tests.auth.conftest import Server, finished, serving
from tests.fixtures.llm import LlmServer

PRE_TENANT = Path(__file__).with_name("pre_tenant_tools.json")

TOOL = {
    "name": "top-one",
    "description": "The best item by score",
    "steps": [{"op": "top_k", "k": 1, "by": "score"}],
}
ITEMS = [{"name": "a", "score": 1}, {"name": "b", "score": 3}]


@pytest.fixture
async def server(tmp_path: Path, scripted_llm: LlmServer) -> AsyncIterator[Server]:
    async with serving(
        tmp_path / "data",
        workers=["builtin", "agent"],
        llm_base_url=scripted_llm.base_url,
        llm_max_retries=0,
    ) as running:
        yield running


def test_registrations_written_before_tenants_read_as_the_default_tenants() -> None:
    old = json.loads(PRE_TENANT.read_text())
    tools = [decode(bytes.fromhex(hex_bytes)).payload for hex_bytes in old.values()]
    assert all(isinstance(t, ToolRegistered) and t.tenant is None for t in tools)
    assert [t.name for t in tools] == ["top-sellers", "petstore"]  # type: ignore[union-attr]
    catalog = ToolCatalog()
    for tool in tools:
        catalog.apply(tool)  # type: ignore[arg-type]
    assert catalog.get("petstore", "openapi", tenant="default") is not None
    assert catalog.get("petstore", tenant="acme") is None


def test_a_registration_carries_its_tenant() -> None:
    event = Event("e1", "acme/t", 1, ToolRegistered("t", "pipeline", {}, tenant="acme"))
    assert as_logged(event).payload == ToolRegistered("t", "pipeline", {}, tenant="acme")


def test_one_name_in_two_tenants_is_two_tools() -> None:
    catalog = ToolCatalog()
    catalog.apply(ToolRegistered("t", "pipeline", {"steps": [1]}, "acme's", tenant="acme"))
    catalog.apply(ToolRegistered("t", "openapi", {}, "default's"))
    acme, default = catalog.get("t", tenant="acme"), catalog.get("t", tenant=None)
    assert acme is not None
    assert acme.description == "acme's"
    assert default is not None
    assert default.description == "default's"
    assert [t.description for t in catalog.of_tenant("globex")] == []
    assert catalog.search("t", tenant="globex") == []


async def test_another_tenants_tools_are_invisible_in_the_api(server: Server) -> None:
    acme = await server.as_("ann", "operator", tenant="acme")
    globex = await server.as_("gus", "operator", tenant="globex")
    assert (await acme.post("/api/v1/tools", json=TOOL)).status_code == 201
    assert (await acme.get("/api/v1/tools/top-one")).status_code == 200
    assert [t["name"] for t in (await acme.get("/api/v1/tools")).json()["items"]] == ["top-one"]
    assert (await globex.get("/api/v1/tools")).json()["items"] == []
    assert (await globex.get("/api/v1/tools/search", params={"q": "best"})).json() == {"items": []}
    assert (await globex.get("/api/v1/tools/top-one")).status_code == 404
    # globex may register the same name: its own tool, acme's stays as it was.
    mine = {**TOOL, "description": "globex's own"}
    assert (await globex.post("/api/v1/tools", json=mine)).status_code == 201
    assert (await globex.get("/api/v1/tools/top-one")).json()["description"] == "globex's own"
    assert (await acme.get("/api/v1/tools/top-one")).json()["description"] == TOOL["description"]


def _workflow(prompt: str) -> dict[str, Any]:
    return {"name": "tools", "nodes": [agent("work", prompt)], "output": ".nodes.work.answer"}


async def test_an_agent_uses_only_its_runs_tenants_tools(
    server: Server, scripted_llm: LlmServer
) -> None:
    acme = await server.as_("ann", "operator", tenant="acme")
    globex = await server.as_("gus", "operator", tenant="globex")
    assert (await acme.post("/api/v1/tools", json=TOOL)).status_code == 201
    scripted_llm.serve(
        {
            "match": "best item",
            "turns": [
                {"tool_calls": [call("search_tools", query="best item score")]},
                {"tool_calls": [call("execute_pipeline", tool="top-one", input=ITEMS)]},
                {"content": "done"},
            ],
        }
    )
    for client, want_found in ((globex, False), (acme, True)):
        body = {"definition": _workflow("best item"), "inputs": {}}
        response = await client.post("/api/v1/runs", json=body)
        assert response.status_code == 202, response.text
        run = await finished(client, response.json()["run_id"])
        assert run["status"] == "completed", run
        found, ran = scripted_llm.tool_results()[-2:]
        if want_found:
            assert [r["name"] for r in found["results"]] == ["top-one"]
            assert ran == {"result": [{"name": "b", "score": 3}]}
        else:
            assert found == {"results": []}
            assert ran == {"error": "no composite tool 'top-one'; find one with search_tools"}
