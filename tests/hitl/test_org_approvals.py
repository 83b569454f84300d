"""Approvals that organisations need (issue 16): quorum, no self-approval, escalation on
a deadline, and waiting for the first of a decision, a signal or the deadline. The real
embedded engine behind the real API; every step is asserted by the events it leaves."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.auth.conftest import serving
from tests.hitl.harness import node, review


def waiting(**gate: Any) -> dict[str, Any]:
    return review(gate)


async def signal(aob: Any, run_id: str, name: str, payload: Any, key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    return await aob.client.post(
        f"/api/v1/runs/{run_id}/signals/{name}", json=payload, headers=headers
    )


async def test_a_quorum_of_two_of_three_counts_a_duplicate_vote_once(aob):
    run_id = await aob.submit(waiting(approvers=["ann", "bob", "cy"], quorum=2))
    [approval] = await aob.pending(run_id)
    approval_id = approval["approval_id"]

    first = await aob.decide(approval_id, "approve", actor="ann", comments="fine")
    assert first.status_code == 200, first.text
    assert (first.json()["status"], len(first.json()["votes"])) == ("pending", 1)
    again = await aob.decide(approval_id, "approve", actor="ann")
    assert again.status_code == 200
    assert again.json()["duplicate_vote"] is True
    assert [v["voter"] for v in again.json()["votes"]] == ["ann"]
    assert (await aob.run(run_id))["status"] == "waiting"  # one person is not a quorum

    refused = await aob.decide(approval_id, "approve", actor="mallory")
    assert refused.status_code == 403

    assert (await aob.decide(approval_id, "approve", actor="bob")).status_code == 200
    run = await aob.finished(run_id)
    assert run["status"] == "completed"
    gate = node(run, "gate")["output"]
    assert (gate["decision"], gate["won"], gate["decided_by"]) == (
        "approve",
        "approval",
        "system:quorum",
    )
    assert [(v["voter"], v["decision"]) for v in gate["votes"]] == [
        ("ann", "approve"),
        ("bob", "approve"),
    ]
    assert len(await aob.events_of(run_id, "ApprovalVoted")) == 2
    [decided] = await aob.events_of(run_id, "ApprovalDecided")
    assert decided["comments"] == "2 of 2 needed to approve: ann, bob"
    shown = (await aob.client.get(f"/api/v1/approvals/{approval_id}")).json()
    steps = [d.get("type", "ApprovalDecided") for d in shown["context"]["decisions"]]
    assert steps == ["ApprovalVoted", "ApprovalVoted", "ApprovalDecided"]


async def test_one_rejection_rejects_a_quorum_approval_unless_reject_quorum_says(aob):
    vetoed = await aob.submit(waiting(quorum=2))
    [approval] = await aob.pending(vetoed)
    await aob.decide(approval["approval_id"], "reject", actor="ann", comments="no")
    run = await aob.finished(vetoed)
    assert node(run, "gate")["output"]["decision"] == "reject"
    assert run["output"]["revise"] == "revised"

    outvoted = await aob.submit(waiting(quorum=2, reject_quorum=2))
    [approval] = await aob.pending(outvoted)
    for actor, decision in (("ann", "reject"), ("bob", "approve"), ("cy", "approve")):
        assert (await aob.decide(approval["approval_id"], decision, actor=actor)).status_code == 200
    run = await aob.finished(outvoted)
    assert node(run, "gate")["output"]["decision"] == "approve"


async def test_escalation_asks_a_second_group_then_the_timeout_outcome_applies(aob):
    gate = {
        "approvers": ["ann"],
        "timeout_ms": 300,
        "escalation": [{"approvers": ["boss"], "timeout_ms": 300}],
        "on_timeout": "reject",
    }
    run_id = await aob.submit(waiting(**gate))
    [approval] = await aob.pending(run_id)
    assert (await aob.decide(approval["approval_id"], "approve", actor="boss")).status_code == 403

    await eventually(lambda: aob.events_of(run_id, "ApprovalEscalated"))
    [escalation] = await aob.events_of(run_id, "ApprovalEscalated")
    assert (escalation["level"], escalation["approvers"]) == (1, ["ann", "boss"])
    run = await aob.finished(run_id)
    gate_output = node(run, "gate")["output"]
    assert (gate_output["decision"], gate_output["won"]) == ("reject", "timeout")
    [decided] = await aob.events_of(run_id, "ApprovalDecided")
    assert decided["decided_by"] == "system:timeout"


async def test_escalated_group_may_decide(aob):
    gate = {"approvers": ["ann"], "timeout_ms": 200, "escalation": [{"approvers": ["boss"]}]}
    run_id = await aob.submit(waiting(**gate))
    [approval] = await aob.pending(run_id)
    await eventually(lambda: _level_is(aob, run_id, 1))
    assert (await aob.decide(approval["approval_id"], "approve", actor="boss")).status_code == 200
    run = await aob.finished(run_id)
    assert node(run, "gate")["output"]["decided_by"] == "boss"


async def test_a_signal_wins_the_wait(aob):
    run_id = await aob.submit(waiting(signals=["paid"], timeout_ms=60_000))
    await aob.pending(run_id)
    sent = await signal(aob, run_id, "paid", {"amount": 12}, key="k1")
    assert sent.status_code == 202, sent.text
    again = await signal(aob, run_id, "paid", {"amount": 99}, key="k1")
    assert again.status_code == 200
    assert again.json()["payload"] == {"amount": 12}
    run = await aob.finished(run_id)
    gate = node(run, "gate")["output"]
    assert gate["won"] == "signal"
    assert (gate["signal"]["name"], gate["signal"]["payload"]) == ("paid", {"amount": 12})
    assert len(await aob.events_of(run_id, "SignalReceived")) == 1


async def test_an_approval_wins_the_wait(aob):
    run_id = await aob.submit(waiting(signals=["paid"], timeout_ms=60_000))
    [approval] = await aob.pending(run_id)
    await aob.decide(approval["approval_id"], "approve", actor="ann")
    run = await aob.finished(run_id)
    assert node(run, "gate")["output"]["won"] == "approval"
    late = await signal(aob, run_id, "paid", {})
    assert late.status_code == 409  # the run is over


async def test_the_timer_wins_the_wait(aob):
    run_id = await aob.submit(waiting(signals=["paid"], timeout_ms=200, on_timeout="approve"))
    run = await aob.finished(run_id)
    gate = node(run, "gate")["output"]
    assert (gate["won"], gate["decision"], gate["signal"]) == ("timeout", "approve", None)


async def test_a_signal_sent_before_the_wait_began_is_not_lost(aob):
    definition = waiting(signals=["paid"])
    definition["nodes"].insert(0, {"id": "first", "type": "hitl", "config": {}})
    definition["edges"].insert(0, {"from": "first", "to": "draft"})
    run_id = await aob.submit(definition)
    [first] = await aob.pending(run_id)
    assert (await signal(aob, run_id, "paid", {"ref": "early"})).status_code == 202
    await aob.decide(first["approval_id"], "approve", actor="ann")
    run = await aob.finished(run_id)
    gate = node(run, "gate")["output"]
    assert (gate["won"], gate["signal"]["payload"]) == ("signal", {"ref": "early"})


async def test_bad_signals_get_problem_bodies(aob):
    run_id = await aob.submit(waiting(signals=["paid"]))
    await aob.pending(run_id)
    big = await aob.client.post(
        f"/api/v1/runs/{run_id}/signals/paid",
        content=b'"' + b"x" * 70_000 + b'"',
        headers={"Content-Type": "application/json"},
    )
    assert big.status_code == 413
    assert big.headers["content-type"].startswith("application/problem+json")
    assert (await aob.client.post(f"/api/v1/runs/{run_id}/signals/bad name")).status_code == 422
    assert (await signal(aob, "run_nope", "paid", {})).status_code == 404
    assert await aob.events_of(run_id, "SignalReceived") == []


async def test_the_submitter_may_not_approve_unless_the_workflow_allows_it(tmp_path):
    async with serving(tmp_path / "data") as server:
        sam = await server.as_("sam", "operator", "approver")
        ann = await server.as_("ann", "approver")
        for allowed in (False, True):
            body = {"definition": waiting(allow_self_approval=allowed)}
            run_id = (await sam.post("/api/v1/runs", json=body)).json()["run_id"]
            approval_id = await _pending(sam, run_id)
            decided = await sam.post(
                f"/api/v1/approvals/{approval_id}/decide", json={"decision": "approve"}
            )
            if allowed:
                assert decided.status_code == 200, decided.text
                continue
            assert decided.status_code == 403
            assert decided.json()["type"].endswith("/self-approval")
            assert "sam" in decided.json()["detail"]
            ok = await ann.post(
                f"/api/v1/approvals/{approval_id}/decide", json={"decision": "approve"}
            )
            assert ok.status_code == 200, ok.text


async def test_another_tenants_run_cannot_be_signalled_or_voted_on(tmp_path):
    async with serving(tmp_path / "data") as server:
        victim = await server.as_("vic", "operator", "approver", tenant="blue")
        attacker = await server.as_("eve", "admin", tenant="red")
        body = {"definition": waiting(signals=["paid"], quorum=2)}
        run_id = (await victim.post("/api/v1/runs", json=body)).json()["run_id"]
        approval_id = await _pending(victim, run_id)

        sent = await attacker.post(f"/api/v1/runs/{run_id}/signals/paid", json={"x": 1})
        assert sent.status_code == 404
        assert sent.json()["detail"] == f"no run {run_id!r}"
        vote = await attacker.post(
            f"/api/v1/approvals/{approval_id}/decide", json={"decision": "approve"}
        )
        assert vote.status_code == 404

        run = (await victim.get(f"/api/v1/runs/{run_id}")).json()
        assert run["status"] == "waiting"
        events = (await victim.get(f"/api/v1/runs/{run_id}/events")).json()["items"]
        kinds = {e["type"] for e in events}
        assert not kinds & {"SignalReceived", "ApprovalVoted", "ApprovalDecided"}
        ok = await victim.post(f"/api/v1/runs/{run_id}/signals/paid", json={"x": 2})
        assert ok.status_code == 202


async def _level_is(aob: Any, run_id: str, level: int) -> bool:
    return bool((await aob.approvals(run_id=run_id))[0]["level"] == level)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """`check()`'s first truthy answer (polled until `timeout`)."""
    async with asyncio.timeout(timeout):
        for _ in itertools.count():
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.02)
    raise AssertionError("unreachable: the loop ends by returning or timing out")


async def _pending(client: httpx.AsyncClient, run_id: str) -> str:
    for _ in range(500):
        page = await client.get("/api/v1/approvals", params={"run_id": run_id})
        items = page.json()["items"]
        if items:
            return str(items[0]["approval_id"])
        await asyncio.sleep(0.02)
    raise AssertionError("no approval asked for")
