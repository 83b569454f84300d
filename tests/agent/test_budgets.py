"""Cost and token budgets on the embedded server: usage priced per node and run, run
budgets that stop a run (or ask whether to continue), tenant budgets per period that
stop every run of one tenant and no other's. The real openai SDK streams from the
scripted endpoint over real HTTP; each scripted turn says its usage."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aob.projections.usage.pricing import NANO_PER_USD
from tests.agent.harness import Aob, call, node, running_aob
from tests.agent.harness import agent as plain_agent
from tests.auth.conftest import Server, finished, serving
from tests.fixtures.llm import LlmServer

# 1 token = $0.001 either way: figures are easy to check.
PRICES = {"scripted": {"input": 1000.0, "output": 1000.0, "cached_input": 1000.0}}
PIPELINE = call("execute_pipeline", steps=[{"op": "jq_transform", "expr": "1"}])


def turn(tokens: int, **reply: Any) -> dict[str, Any]:
    """A scripted answer that used `tokens` (prompt and completion)."""
    prompt = tokens - 20
    return {
        **(reply or {"content": "done"}),
        "usage": {"prompt_tokens": prompt, "completion_tokens": 20, "cached_tokens": 0},
    }


def agent(node_id: str, prompt: str, **config: Any) -> dict[str, Any]:
    """An agent without patch_workflow: its context leaves out the definition, so the
    script tells nodes apart by their prompts."""
    return plain_agent(node_id, prompt, tools=["execute_pipeline"], **config)


def workflow(*nodes: dict[str, Any], budget: dict[str, Any] | None = None) -> dict[str, Any]:
    definition: dict[str, Any] = {"name": "budgeted", "nodes": list(nodes)}
    ids = [n["id"] for n in nodes]
    definition["edges"] = [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]
    if budget is not None:
        definition["budget"] = budget
    return definition


@pytest.fixture
async def aob(tmp_path: Path, scripted_llm: LlmServer) -> AsyncIterator[Aob]:
    async with running_aob(
        tmp_path / "data", scripted_llm.base_url, llm_model="scripted", model_prices=PRICES
    ) as instance:
        yield instance


async def test_usage_is_priced_per_node_and_in_total(aob: Aob, scripted_llm: LlmServer):
    scripted_llm.serve(
        {"match": "first", "turns": [turn(300, tool_calls=[PIPELINE]), turn(200)]},
        {"match": "second", "turns": [turn(100)]},
    )
    other = agent("b", "second", model="no-price-model")
    run = await aob.finished(await aob.submit(workflow(agent("a", "first"), other)))
    assert run["status"] == "completed", run
    usage = run["usage"]
    a, b = usage["nodes"]
    assert (a["node_id"], a["llm_calls"], a["total_tokens"]) == ("a", 2, 500)
    assert a["cost_usd"] == pytest.approx(0.5)
    assert a["unpriced_tokens"] == 0
    assert (b["node_id"], b["total_tokens"], b["models"]) == ("b", 100, ["no-price-model"])
    assert b["cost_usd"] is None
    assert b["unpriced_tokens"] == 100
    total = usage["total"]
    assert (total["total_tokens"], total["unpriced_tokens"]) == (600, 100)
    assert total["cost_usd"] == pytest.approx(0.5)
    recorded = await aob.events_of(run["run_id"], "AgentUsageRecorded")
    priced = next(e for e in recorded if e["node_id"] == "a")
    # The cost and the price it used are in the log: history stays right when prices change.
    assert priced["cost_nano_usd"] == NANO_PER_USD // 2
    assert priced["price"] == PRICES["scripted"]
    assert priced["tenant"] == "default"


async def test_a_run_past_its_cost_budget_stops_with_the_figures(aob: Aob, scripted_llm: LlmServer):
    scripted_llm.serve({"match": "spend", "turns": [turn(320, tool_calls=[PIPELINE])]})
    definition = workflow(agent("a", "spend"), budget={"max_cost_usd": 0.5})
    definition["nodes"][0]["retry"] = {"max_attempts": 3, "initial_backoff_ms": 1}
    run = await aob.finished(await aob.submit(definition))
    assert run["status"] == "failed"
    assert "run budget max_cost_usd 0.50 exceeded: spent 0.64" in run["error"]
    assert len(scripted_llm.requests) == 2  # the call that crossed it was the last
    assert node(run, "a")["attempt"] == 1  # a budget is not retried
    assert run["usage"]["total"]["cost_usd"] == pytest.approx(0.64)


async def test_a_used_up_run_budget_refuses_the_next_nodes_first_call(
    aob: Aob, scripted_llm: LlmServer
):
    scripted_llm.serve(
        {"match": "first", "turns": [turn(500)]}, {"match": "second", "turns": [turn(100)]}
    )
    definition = workflow(agent("a", "first"), agent("b", "second"), budget={"max_tokens": 500})
    run = await aob.finished(await aob.submit(definition))
    assert run["status"] == "failed"
    assert node(run, "a")["status"] == "completed"
    assert "run budget max_tokens 500 used up: spent 500" in node(run, "b")["error"]
    assert len(scripted_llm.requests) == 1  # b never called its LLM


async def test_patches_cannot_lift_the_run_budget(aob: Aob, scripted_llm: LlmServer):
    lift = call(
        "patch_workflow",
        operations=[{"op": "replace", "path": "/budget", "value": {"max_tokens": 1_000_000}}],
    )
    scripted_llm.serve({"match": "lift", "turns": [turn(300, tool_calls=[lift]), turn(300)]})
    patcher = plain_agent("a", "lift", tools=["patch_workflow"])
    run = await aob.finished(await aob.submit(workflow(patcher, budget={"max_tokens": 500})))
    (_patch,) = await aob.events_of(run["run_id"], "PatchApplied")  # applied, changes nothing
    assert run["status"] == "failed"
    assert "run budget max_tokens 500 exceeded: spent 600" in run["error"]


async def _approval_of(aob: Aob, run_id: str) -> dict[str, Any]:
    run = await aob.until(run_id, lambda r: r["status"] in ("waiting", "failed", "completed"))
    assert run["status"] == "waiting", run
    response = await aob.client.get("/api/v1/approvals", params={"run_id": run_id})
    (approval,) = response.json()["items"]
    return dict(approval)


@pytest.mark.parametrize("decision", ["approve", "reject"])
async def test_an_approval_branch_asks_whether_to_continue(
    aob: Aob, scripted_llm: LlmServer, decision: str
):
    scripted_llm.serve(
        {
            "match": "spend",
            "turns": [
                turn(300, tool_calls=[PIPELINE]),
                turn(300, tool_calls=[PIPELINE]),
                turn(300),
            ],
        }
    )
    definition = workflow(
        agent("a", "spend", on_budget_exceeded="approval"), budget={"max_tokens": 500}
    )
    run_id = await aob.submit(definition)
    approval = await _approval_of(aob, run_id)
    assert approval["message"].startswith("budget exceeded, continue? run budget max_tokens")
    assert approval["payload"]["spent"] == "600"
    assert len(scripted_llm.requests) == 2  # nothing more while a person decides
    response = await aob.client.post(
        f"/api/v1/approvals/{approval['approval_id']}/decide",
        json={"decision": decision, "comments": "ok"},
    )
    assert response.status_code == 200, response.text
    run = await aob.finished(run_id)
    if decision == "approve":  # lifted for this node: it runs to its answer
        assert run["status"] == "completed", run
        assert run["usage"]["total"]["total_tokens"] == 900
    else:
        assert run["status"] == "failed"
        assert (
            "run budget max_tokens 500 exceeded: spent 600; continuing was refused"
            in (run["error"])
        )
        assert len(scripted_llm.requests) == 2


# --- tenants --------------------------------------------------------------------------


@pytest.fixture
async def server(tmp_path: Path, scripted_llm: LlmServer) -> AsyncIterator[Server]:
    budgets = {"acme": {"max_tokens": 500}}
    async with serving(
        tmp_path / "data",
        workers=["builtin", "agent"],
        llm_base_url=scripted_llm.base_url,
        llm_max_retries=0,
        llm_model="scripted",
        model_prices=PRICES,
        tenant_budgets=budgets,
    ) as running:
        yield running


async def test_a_tenant_budget_stops_its_runs_and_no_one_elses(
    server: Server, scripted_llm: LlmServer
):
    scripted_llm.serve({"match": "work", "turns": [turn(300)]})
    acme = await server.as_("ann", "operator", tenant="acme")
    globex = await server.as_("gus", "operator", tenant="globex")

    async def run_as(client: Any) -> dict[str, Any]:
        body = {"definition": workflow(agent("a", "work")), "inputs": {}}
        response = await client.post("/api/v1/runs", json=body)
        assert response.status_code == 202, response.text
        return await finished(client, response.json()["run_id"])

    first, second = await run_as(acme), await run_as(acme)
    assert first["status"] == "completed"  # 300 of 500
    assert second["status"] == "failed"  # 600: the call that crossed it ended the node
    assert "tenant acme (month from " in second["error"]
    assert "budget max_tokens 500 exceeded: spent 600" in second["error"]
    calls = len(scripted_llm.requests)
    third = await run_as(acme)  # a new run of the tenant: refused before its first call
    assert third["status"] == "failed"
    assert "budget max_tokens 500 exceeded: spent 600" in third["error"]
    assert len(scripted_llm.requests) == calls
    for _ in range(3):  # another tenant's runs go on
        assert (await run_as(globex))["status"] == "completed"
