"""The approvals API: listing, showing with context, who may decide, bad requests."""

from __future__ import annotations

import pytest

from tests.hitl.harness import review


async def test_list_pending_approvals_all_or_per_run(aob):
    first = await aob.submit(review())
    second = await aob.submit(review())
    [a1] = await aob.pending(first)
    [a2] = await aob.pending(second)
    both = [a1["approval_id"], a2["approval_id"]]
    assert [a["approval_id"] for a in await aob.approvals()] == both
    assert [a["run_id"] for a in await aob.approvals(run_id=second)] == [second]

    assert (await aob.decide(a1["approval_id"], "approve")).status_code == 200
    assert [a["approval_id"] for a in await aob.approvals()] == [a2["approval_id"]]
    assert [a["status"] for a in await aob.approvals(run_id=first, status="any")] == ["approved"]
    assert [a["run_id"] for a in await aob.approvals(status="approved")] == [first]


async def test_listing_a_missing_run_or_a_bad_status_is_a_clear_error(aob):
    response = await aob.client.get("/api/v1/approvals", params={"run_id": "run_nope"})
    assert response.status_code == 404
    assert response.json()["detail"] == "no run 'run_nope'"
    response = await aob.client.get("/api/v1/approvals", params={"status": "maybe"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "/query/status"


async def test_show_an_approval_with_its_context(aob):
    run_id = await aob.submit(review(), inputs={"author": "kim"})
    [approval] = await aob.pending(run_id)
    response = await aob.client.get(f"/api/v1/approvals/{approval['approval_id']}")
    assert response.status_code == 200, response.text
    shown = response.json()
    assert shown["message"] == "Publish Q3?"
    assert shown["approvers"] == []
    context = shown["context"]
    assert (context["run"]["run_id"], context["run"]["status"]) == (run_id, "waiting")
    assert context["run"]["inputs"] == {"author": "kim"}
    assert (context["node"]["node_id"], context["node"]["status"]) == ("gate", "waiting")
    assert context["input"]["nodes"] == {"draft": {"title": "Q3", "words": 120}}
    assert context["decisions"] == []

    await aob.decide(approval["approval_id"], "reject", actor="bob", comments="no")
    await aob.finished(run_id)
    shown = (await aob.client.get(f"/api/v1/approvals/{approval['approval_id']}")).json()
    [decision] = shown["context"]["decisions"]
    assert (decision["decision"], decision["decided_by"]) == ("reject", "bob")
    assert decision["comments"] == "no"
    assert decision["won"] is True
    assert shown["context"]["node"]["status"] == "completed"


async def test_unknown_approval_is_404(aob):
    response = await aob.decide("nope", "approve")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert (await aob.client.get("/api/v1/approvals/nope")).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"decision": "maybe"},
        {},
        {"decision": "approve", "comments": 5},
        {"decision": "approve", "x": 1},
    ],
)
async def test_invalid_decision_is_422(aob, body):
    run_id = await aob.submit(review())
    [approval] = await aob.pending(run_id)
    url = f"/api/v1/approvals/{approval['approval_id']}/decide"
    response = await aob.client.post(url, json=body)
    assert response.status_code == 422
    assert response.json()["type"].endswith("/invalid-request")
    assert (await aob.approvals(run_id=run_id))[0]["status"] == "pending"


async def test_only_named_approvers_or_role_holders_may_decide(aob):
    run_id = await aob.submit(review({"approvers": ["alice"], "roles": ["editor"]}))
    [approval] = await aob.pending(run_id)
    assert approval["approvers"] == ["alice", "role:editor"]
    approval_id = approval["approval_id"]

    refused = await aob.decide(approval_id, "approve", actor="mallory", roles="viewer")
    assert refused.status_code == 403
    body = refused.json()
    assert body["type"].endswith("/not-an-approver")
    assert "'mallory' may not decide" in body["detail"]
    assert "approvers ['alice'] or roles ['editor']" in body["detail"]
    reserved = await aob.decide(approval_id, "approve", actor="system:timeout")
    assert reserved.status_code == 403
    assert "reserved" in reserved.json()["detail"]

    allowed = await aob.decide(approval_id, "approve", actor="ed", roles="viewer, editor")
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["decided_by"] == "ed"


async def test_a_placeholder_failing_at_run_time_fails_the_node_clearly(aob):
    run_id = await aob.submit(review({"message": "{{ .nodes.draft.title | error }}"}))
    run = await aob.finished(run_id)
    assert run["status"] == "failed"
    assert "cannot render the approval request" in run["error"]
    assert "Q3" in run["error"]
    assert await aob.approvals(run_id=run_id, status="any") == []


async def test_hitl_definition_problems_are_422_with_paths(aob):
    definition = review({"rejection_path": ["nowhere"]})
    response = await aob.client.post("/api/v1/runs", json={"definition": definition})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "path": "/nodes/1/config/rejection_path/0",
            "message": "rejection_path entry 'nowhere': no such node",
        }
    ]
