"""Tenants isolate runs and everything run-scoped: a token of one tenant can neither
see nor touch another's runs, events, patches, approvals or streams (tests try every
route), while old history without tenants still reads, as the default tenant's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from aob.events.codec import as_logged, decode
from aob.events.types import Event, RunSubmitted, TagMoved, WorkflowCreated
from tests.auth.conftest import Server, finished
from tests.auth.test_api_auth import handshake
from tests.hitl.harness import review

PRE_TENANT = Path(__file__).with_name("pre_tenant_events.json")


def test_history_written_before_tenants_reads_as_the_default_tenants() -> None:
    """Bytes from the previous writer schema (saved before `tenant` was added)."""
    old = json.loads(PRE_TENANT.read_text())
    assert set(old) >= {"RunSubmitted", "WorkflowCreated", "TagMoved"}
    for name, hex_bytes in old.items():
        event = decode(bytes.fromhex(hex_bytes))
        assert type(event.payload).__name__ == name.split(".")[0]
        assert event.payload.tenant is None  # type: ignore[union-attr]
    submitted = decode(bytes.fromhex(old["RunSubmitted"])).payload
    assert isinstance(submitted, RunSubmitted)
    assert submitted.tag == "prod"  # the fields around it are intact


@pytest.mark.parametrize(
    "payload",
    [
        RunSubmitted("r", {}, {}, [], tenant="acme"),
        WorkflowCreated("w", 1, {}, tenant="acme"),
        TagMoved("t", "w", 1, tenant="acme"),
    ],
)
def test_new_events_carry_their_tenant(payload: Any) -> None:
    event = Event("e1", "k", 1, payload)
    assert as_logged(event).payload.tenant == "acme"  # type: ignore[union-attr]


async def test_a_tenant_cannot_see_or_touch_another_tenants_runs(server: Server) -> None:
    acme = await server.as_("ann", "operator", "approver", tenant="acme")
    # Beta's strongest principal: an admin, with every permission in its own tenant.
    beta = await server.as_("boss", "admin", tenant="beta")
    async with acme, beta:
        gate = {"approvers": ["ann", "boss"], "allow_self_approval": True}  # ann submits
        submitted = await acme.post("/api/v1/runs", json={"definition": review(gate)})
        run_id = submitted.json()["run_id"]
        approval_id = await pending(acme, run_id)
        unknown = await beta.get("/api/v1/runs/run_doesnotexist")

        for method, path, body in cross_tenant_requests(run_id, approval_id):
            response = await beta.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
            problem = response.json()
            assert problem["type"] == unknown.json()["type"]
            assert problem["title"] in ("Run not found", "Approval not found")
            assert "acme" not in response.text
        # Over a WebSocket too, another tenant's run is answered as an unknown one: the
        # same messages, the same close (refusing the handshake told them apart).
        foreign = await handshake_as(server, beta, f"/api/v1/runs/{run_id}/ws")
        missing = await handshake_as(server, beta, "/api/v1/runs/run_doesnotexist/ws")
        assert foreign[-1] == {"type": "websocket.close", "code": 4404}
        assert [str(m).replace(run_id, "ID") for m in foreign] == [
            str(m).replace("run_doesnotexist", "ID") for m in missing
        ]

        assert (await beta.get("/api/v1/runs")).json()["items"] == []
        listed = await beta.get("/api/v1/approvals", params={"status": "any"})
        assert listed.json()["items"] == []

        # Nothing beta tried changed anything: acme's run waits for acme's decision.
        run = (await acme.get(f"/api/v1/runs/{run_id}")).json()
        assert (run["status"], run["tenant"]) == ("waiting", "acme")
        assert [r["run_id"] for r in (await acme.get("/api/v1/runs")).json()["items"]] == [run_id]
        decided = await acme.post(
            f"/api/v1/approvals/{approval_id}/decide", json={"decision": "approve"}
        )
        assert decided.status_code == 200
        assert (await finished(acme, run_id))["status"] == "completed"
        replay = await acme.post(f"/api/v1/runs/{run_id}/replay")
        assert replay.status_code == 202
        fork = (await acme.get(f"/api/v1/runs/{replay.json()['run_id']}")).json()
        assert fork["tenant"] == "acme"  # a replay stays in its run's tenant
        assert (await beta.get(f"/api/v1/runs/{fork['run_id']}")).status_code == 404


def cross_tenant_requests(run_id: str, approval_id: str) -> list[tuple[str, str, Any]]:
    run = f"/api/v1/runs/{run_id}"
    return [
        ("GET", run, None),
        ("GET", f"{run}/events", None),
        ("GET", f"{run}/events?source=log", None),
        ("GET", f"{run}/patches", None),
        ("GET", f"{run}/patches/p1", None),
        ("GET", f"{run}/stream?from=start", None),
        ("POST", f"{run}/cancel", {"reason": "mine now"}),
        ("POST", f"{run}/patch", {"operations": []}),
        ("POST", f"{run}/patches/p1/approve", {}),
        ("POST", f"{run}/replay", {}),
        ("GET", f"/api/v1/approvals?run_id={run_id}", None),
        # The route reads the last run_id: a guard of the first only was an oracle.
        ("GET", f"/api/v1/approvals?run_id=run_doesnotexist&run_id={run_id}", None),
        ("GET", f"/api/v1/approvals/{approval_id}", None),
        ("POST", f"/api/v1/approvals/{approval_id}/decide", {"decision": "reject"}),
    ]


async def pending(client: httpx.AsyncClient, run_id: str) -> str:
    for _ in range(500):
        items = (await client.get("/api/v1/approvals", params={"run_id": run_id})).json()
        if items["items"]:
            return str(items["items"][0]["approval_id"])
        import asyncio

        await asyncio.sleep(0.02)
    raise AssertionError("no approval")


async def handshake_as(
    server: Server, client: httpx.AsyncClient, path: str
) -> list[dict[str, Any]]:
    """What the app sends to a WebSocket handshake made with `client`'s credential
    (close messages as type and code only)."""
    token = client.headers["authorization"].removeprefix("Bearer ")
    sent = await handshake(server, path, f"access_token={token}")
    return [
        {"type": m["type"], "code": m.get("code")} if m["type"] == "websocket.close" else m
        for m in sent
    ]


async def test_runs_of_callers_without_a_tenant_are_the_default_tenants(
    server: Server,
) -> None:
    default = await server.as_("dee", "operator")
    other = await server.as_("oz", "viewer", tenant="other")
    async with default, other:
        definition = {"name": "t", "nodes": [{"id": "a", "type": "noop"}]}
        run_id = (await default.post("/api/v1/runs", json={"definition": definition})).json()[
            "run_id"
        ]
        assert (await finished(default, run_id))["tenant"] == "default"
        assert (await other.get(f"/api/v1/runs/{run_id}")).status_code == 404


async def test_a_tenant_cannot_see_run_or_take_another_tenants_workflows(
    server: Server,
) -> None:
    acme = await server.as_("ann", "operator", tenant="acme")
    beta = await server.as_("boss", "admin", tenant="beta")
    async with acme, beta:
        definition = {"name": "greet", "nodes": [{"id": "a", "type": "noop"}]}
        created = await acme.post("/api/v1/workflows", json={"definition": definition})
        assert created.status_code == 201

        assert (await beta.get("/api/v1/workflows")).json()["items"] == []
        assert (await beta.get("/api/v1/tags")).json()["items"] == []
        for response in (
            await beta.get("/api/v1/workflows/greet"),
            await beta.get("/api/v1/workflows/greet", params={"version": 1}),
            await beta.post("/api/v1/runs", json={"tag": "greet"}),
            await beta.post("/api/v1/runs", json={"workflow_id": "greet", "version": 1}),
            await beta.post("/api/v1/tags/mine/move", json={"workflow_id": "greet"}),
        ):
            assert response.status_code == 404, response.text
        taken = await beta.post("/api/v1/workflows", json={"definition": definition})
        assert taken.status_code == 409
        assert taken.json()["type"].endswith("/name-taken")
        other = {"name": "other", "nodes": [{"id": "a", "type": "noop"}]}
        tag_taken = await beta.post("/api/v1/workflows", json={"definition": other, "tag": "greet"})
        assert tag_taken.status_code == 409
        assert (await beta.post("/api/v1/workflows", json={"definition": other})).status_code == 201
        own_tag = await beta.post("/api/v1/tags/greet/move", json={"workflow_id": "other"})
        assert own_tag.status_code == 409  # acme's tag stays acme's

        listed = (await acme.get("/api/v1/workflows")).json()["items"]
        assert [(w["workflow_id"], w["tenant"]) for w in listed] == [("greet", "acme")]
        assert [t["tag"] for t in (await acme.get("/api/v1/tags")).json()["items"]] == ["greet"]
        run = await acme.post("/api/v1/runs", json={"tag": "greet"})
        assert run.status_code == 202
        assert (await finished(acme, run.json()["run_id"]))["tenant"] == "acme"


async def test_an_output_shaped_like_a_blob_marker_names_no_blob(server: Server) -> None:
    """Large outputs are kept in the blob store (shared, by content hash) and stored in
    the read models as {"$aob.blob": ref}, which the API fetches. A tenant whose jq builds
    that shape with another tenant's ref would read that tenant's output (an API audit
    did): a marker the projection did not write is shown as the value it is."""
    secret = "s" * (20 * 1024)  # over AOB_OUTPUT_INLINE_BYTES: into the blob store
    async with (
        await server.as_("ann", "operator", tenant="acme") as victim,
        await server.as_("eve", "operator", tenant="evil") as attacker,
    ):
        big = {
            "name": "big",
            "nodes": [{"id": "a", "type": "transform", "config": {"expr": ".inputs.s"}}],
            "output": ".nodes.a",
        }
        submitted = await victim.post(
            "/api/v1/runs", json={"definition": big, "inputs": {"s": secret}}
        )
        done = await finished(victim, submitted.json()["run_id"])
        assert done["output"] == secret  # the victim's own blob is fetched
        refs = [
            e["data"]["output_ref"]
            for e in (await victim.get(f"/api/v1/runs/{done['run_id']}/events")).json()["items"]
            if e["type"] == "NodeCompleted"
        ]
        (ref,) = refs
        assert ref.startswith("sha256:")

        forged = {"$aob.blob": ref}
        echo = {
            "name": "echo",
            "nodes": [{"id": "a", "type": "transform", "config": {"expr": ".inputs.m"}}],
            "output": ".nodes.a",
        }
        for marker in (forged, {"$aob.escaped": forged}):  # and the wrapper's own shape
            sent = await attacker.post(
                "/api/v1/runs", json={"definition": echo, "inputs": {"m": marker}}
            )
            run = await finished(attacker, sent.json()["run_id"])
            assert run["status"] == "completed", run
            assert run["output"] == marker
            assert [n["output"] for n in run["nodes"]] == [marker]
