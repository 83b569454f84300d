"""Issue 11, limits: retyping pending nodes to `agent` got past the 5-agent cap (15
agents in one run), and a zero-agent submission patched up to agents escaped its
rate-limit tier. Against a live embedded server with rate limiting on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.adversarial.capture import CaptureServer
from tests.adversarial.conftest import (
    ATTACKER,
    LiveServer,
    base_env,
    running,
    submit,
    wait_run,
)

pytestmark = pytest.mark.slow

AGENT_CAP = 5  # agent nodes patches may spawn per run (materialize.max_agent_spawns)


@pytest.fixture(scope="module")
def limited_server(
    tmp_path_factory: pytest.TempPathFactory, capture: CaptureServer
) -> Iterator[LiveServer]:
    """Rate limits on; the heavy tier (more than 2 agents) allows one run a minute."""
    data_dir = tmp_path_factory.mktemp("limits") / "data"
    env = base_env(
        data_dir,
        AOB_LLM_BASE_URL=capture.llm_url,
        AOB_RATE_LIMIT="true",
        AOB_RATE_LIMITS=json.dumps({"simple": 100, "standard": 20, "heavy": 1}),
    )
    with running(data_dir, env, "embedded") as server:
        yield server


def held(pending: int) -> dict[str, Any]:
    """A run held open by an approval, with `pending` transforms waiting behind it."""
    nodes: list[dict[str, Any]] = [{"id": "wait", "type": "hitl", "config": {"message": "hold"}}]
    nodes += [{"id": f"p{i}", "type": "transform", "config": {"expr": "1"}} for i in range(pending)]
    edges = [{"from": "wait", "to": f"p{i}"} for i in range(pending)]
    return {"name": "held", "nodes": nodes, "edges": edges}


def agent_node(node_id: str) -> dict[str, Any]:
    return {"id": node_id, "type": "agent", "config": {"prompt": "think"}}


def _agents(run: dict[str, Any]) -> int:
    definition = run.get("definition") or {}
    return sum(1 for node in definition.get("nodes", []) if node.get("type") == "agent")


def test_retyping_pending_nodes_counts_against_the_agent_cap(limited_server: LiveServer) -> None:
    with limited_server.diagnosed(), limited_server.client(ATTACKER) as attacker:
        run_id = submit(attacker, held(15))
        wait_run(attacker, run_id, 30, until=lambda run: run["status"] != "running")
        accepted = 0
        for i in range(15):  # one patch per node, as an agent would, one at a time
            response = attacker.post(
                f"/api/v1/runs/{run_id}/patch",
                json={
                    "operations": [
                        {"op": "replace", "path": f"/nodes/{i + 1}/type", "value": "agent"},
                        {
                            "op": "replace",
                            "path": f"/nodes/{i + 1}/config",
                            "value": {"prompt": "think"},
                        },
                    ]
                },
            )
            if response.status_code in (200, 202):
                accepted += 1
            else:
                assert response.status_code in (409, 422, 429), response.text
                assert "agent" in response.text.lower(), response.text
        run = attacker.get(f"/api/v1/runs/{run_id}").json()
        attacker.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "done"})
    assert accepted <= AGENT_CAP, f"{accepted} nodes became agents"
    assert _agents(run) <= AGENT_CAP, f"the run has {_agents(run)} agent nodes"


def test_a_patch_adding_agents_is_charged_to_the_heavy_tier(limited_server: LiveServer) -> None:
    """The tenant spends its one heavy run of the minute by patching a simple run up to
    three agents; a heavy submission right after is then refused (or the patch was)."""
    heavy = {
        "name": "heavy",
        "nodes": [
            {"id": "wait", "type": "hitl", "config": {"message": "hold"}},
            *(agent_node(f"agent{i}") for i in range(3)),
        ],
        "edges": [{"from": "wait", "to": f"agent{i}"} for i in range(3)],
    }
    with limited_server.diagnosed(), limited_server.client(ATTACKER) as attacker:
        run_id = submit(attacker, held(0))
        wait_run(attacker, run_id, 30, until=lambda run: run["status"] != "running")
        patched = attacker.post(
            f"/api/v1/runs/{run_id}/patch",
            json={
                "operations": [
                    {"op": "add", "path": "/nodes/-", "value": agent_node(f"agent{i}")}
                    for i in range(3)
                ]
            },
        )
        direct = attacker.post("/api/v1/runs", json={"definition": heavy})
        for response in (patched, direct):
            if response.status_code == 202 and "run_id" in response.json():
                attacker.post(f"/api/v1/runs/{response.json()['run_id']}/cancel", json={})
        attacker.post(f"/api/v1/runs/{run_id}/cancel", json={})
    patch_passed = patched.status_code in (200, 202)
    assert not (patch_passed and direct.status_code == 202), (
        "the patched run escaped its tier: the heavy tier still had room after it "
        f"(patch {patched.status_code}, then a heavy submission {direct.status_code})"
    )
    refused = direct if patch_passed else patched
    assert refused.status_code == 429, refused.text
    assert refused.headers.get("retry-after"), refused.headers
