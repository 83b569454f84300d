"""Patch review through the API: an agent's patch waits, a person approves or rejects it."""

from __future__ import annotations

from typing import Any

from tests.agent.harness import Aob, agent, call, node
from tests.fixtures.llm import LlmServer

ADD_NOTIFY = [
    {
        "op": "add",
        "path": "/nodes/-",
        "value": {"id": "notify", "type": "transform", "config": {"expr": '"sent"'}},
    },
    {"op": "add", "path": "/edges/-", "value": {"from": "plan", "to": "notify"}},
]


def reviewed() -> dict[str, Any]:
    return {
        "name": "reviewed",
        "patch_policy": "review",
        "edges": [],
        "nodes": [agent("plan", "plan the follow-up")],
        "output": "{plan: .nodes.plan.answer, notify: .nodes.notify}",
    }


async def awaiting_review(aob: Aob, scripted_llm: LlmServer) -> tuple[str, dict[str, Any]]:
    scripted_llm.serve(
        {
            "match": "plan the follow-up",
            "turns": [
                {
                    "tool_calls": [
                        call("patch_workflow", operations=ADD_NOTIFY, reason="notify ops")
                    ]
                },
                {"content": "proposed"},
            ],
        }
    )
    run_id = await aob.submit(reviewed())
    await aob.until(
        run_id, lambda r: r["status"] == "waiting" and node(r, "plan")["status"] == "completed"
    )
    (patch,) = (await aob.client.get(f"/api/v1/runs/{run_id}/patches")).json()["items"]
    return run_id, patch


async def test_patch_awaiting_review_then_approved(aob: Aob, scripted_llm: LlmServer):
    run_id, patch = await awaiting_review(aob, scripted_llm)
    assert patch["status"] == "proposed"
    assert patch["review"] == "pending"
    assert patch["node_id"] == "plan"
    (result,) = scripted_llm.tool_results()
    assert result["status"] == "awaiting_review"
    assert result["patch_id"] == patch["patch_id"]

    shown = (await aob.client.get(f"/api/v1/runs/{run_id}/patches/{patch['patch_id']}")).json()
    assert shown["diff"]["applies"] is True
    assert [n["id"] for n in shown["diff"]["added_nodes"]] == ["notify"]
    assert shown["diff"]["added_edges"] == [{"from": "plan", "to": "notify"}]
    assert shown["diff"]["removed_nodes"] == []

    response = await aob.client.post(
        f"/api/v1/runs/{run_id}/patches/{patch['patch_id']}/approve",
        json={"reason": "looks safe"},
        headers={"X-Aob-Actor": "carol"},
    )
    assert response.status_code == 200, response.text
    decided = response.json()
    assert decided["status"] == "applied"
    assert decided["review"] == "approved"
    assert decided["reviewed_by"] == "carol"
    assert decided["review_reason"] == "looks safe"
    run = await aob.finished(run_id)
    assert run["status"] == "completed", run
    assert run["output"] == {"plan": "proposed", "notify": "sent"}
    (reviewed_event,) = await aob.events_of(run_id, "PatchReviewed")
    assert reviewed_event["decision"] == "approve"


async def test_patch_awaiting_review_then_rejected(aob: Aob, scripted_llm: LlmServer):
    run_id, patch = await awaiting_review(aob, scripted_llm)
    url = f"/api/v1/runs/{run_id}/patches/{patch['patch_id']}"
    response = await aob.client.post(
        f"{url}/reject", json={"reason": "no"}, headers={"X-Aob-Actor": "dave"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "rejected"
    assert response.json()["reasons"] == ["rejected in review by dave: no"]
    run = await aob.finished(run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"plan": "proposed", "notify": None}
    # Decided: a second review is refused, and the diff is no longer shown.
    again = await aob.client.post(f"{url}/approve")
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["review"] == "rejected"
    assert (await aob.client.get(url)).json()["diff"] is None


async def test_review_of_unknown_patch_or_auto_patch_is_refused(aob: Aob, scripted_llm: LlmServer):
    scripted_llm.serve(
        {
            "match": "plan the follow-up",
            "turns": [
                {"tool_calls": [call("patch_workflow", operations=ADD_NOTIFY)]},
                {"content": "ok"},
            ],
        }
    )
    definition = {**reviewed(), "patch_policy": "auto"}
    run = await aob.finished(await aob.submit(definition))
    (patch,) = (await aob.client.get(f"/api/v1/runs/{run['run_id']}/patches")).json()["items"]
    assert patch["review"] is None
    assert patch["status"] == "applied"
    url = f"/api/v1/runs/{run['run_id']}/patches"
    refused = await aob.client.post(f"{url}/{patch['patch_id']}/approve")
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"patch {patch['patch_id']!r} is not under review (applied)"
    )
    assert (await aob.client.post(f"{url}/nope/approve")).status_code == 404
    assert (await aob.client.get(f"{url}/nope")).status_code == 404
    assert (await aob.client.get("/api/v1/runs/run_nope/patches/x")).status_code == 404
