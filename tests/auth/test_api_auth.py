"""Authentication and roles through the real API: every endpoint needs a credential,
each role does what it may and nothing more, the actor is the principal, tokens are
administered over the API, JWTs from an identity provider work end to end."""

from __future__ import annotations

import re
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from aob.platform.auth.http import PUBLIC_PATHS
from tests.auth.conftest import Server, finished, serving, transform
from tests.hitl.harness import review

PROBLEM = "application/problem+json"
WEBSOCKETS = ["/api/v1/runs/{run_id}/ws"]  # not in the OpenAPI document


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def protected_routes(server: Server) -> list[tuple[str, str]]:
    """Every documented operation (the OpenAPI document lists the included routers')."""
    found = []
    for path, operations in server.app.openapi()["paths"].items():
        if path not in PUBLIC_PATHS:
            found += [(m.upper(), concrete(path)) for m in sorted(operations) if m != "options"]
    return found


async def test_every_endpoint_refuses_a_request_without_a_valid_credential(
    server: Server,
) -> None:
    routes = protected_routes(server)
    assert len(routes) >= 25  # the sweep sees the whole API
    bad = [None, "aob_000000000000_" + "A" * 43, "Basic dXNlcjpwYXNz", "garbage"]
    async with server.client() as client:
        for method, path in routes:
            for credential in bad:
                headers = (
                    {
                        "Authorization": credential
                        if " " in (credential or "")
                        else f"Bearer {credential}"
                    }
                    if credential
                    else {}
                )
                response = await client.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, credential, response.text)
                assert response.headers["content-type"] == PROBLEM
                assert response.headers["www-authenticate"].startswith("Bearer")
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


async def test_a_websocket_without_a_credential_is_closed_before_it_opens(
    server: Server,
) -> None:
    closed = {"type": "websocket.close", "code": 1008, "reason": "Authentication required"}
    for path in WEBSOCKETS:
        assert await handshake(server, concrete(path)) == [closed]


async def handshake(server: Server, path: str, query: str = "") -> list[dict[str, Any]]:
    """What the app sends to a WebSocket handshake (credentials only in `query`)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"aob")],
        "scheme": "ws",
        "server": ("aob", 80),
        "app": server.app,
    }
    await server.app(scope, receive, send)
    return sent


async def test_roles_decide_what_a_principal_may_do(server: Server) -> None:
    viewer = await server.as_("vic", "viewer")
    operator = await server.as_("olga", "operator")
    approver = await server.as_("alice", "approver")
    async with viewer, operator, approver:
        refused = await viewer.post("/api/v1/runs", json={"definition": transform()})
        assert refused.status_code == 403
        assert refused.json()["needs"] == "operate"
        assert (await viewer.get("/api/v1/runs")).json()["items"] == []  # nothing recorded

        submitted = await operator.post(
            "/api/v1/runs", json={"definition": review({"approvers": ["alice"]})}
        )
        assert submitted.status_code == 202
        run_id = submitted.json()["run_id"]
        approval = await _pending_approval(viewer, run_id)

        by_operator = await operator.post(
            f"/api/v1/approvals/{approval}/decide", json={"decision": "approve"}
        )
        assert by_operator.status_code == 403
        decided = await approver.post(
            f"/api/v1/approvals/{approval}/decide", json={"decision": "approve"}
        )
        assert decided.status_code == 200, decided.text
        assert decided.json()["decided_by"] == "alice"
        assert (await approver.post(f"/api/v1/runs/{run_id}/cancel")).status_code == 403
        assert (await viewer.get("/api/v1/admin/tokens")).status_code == 403
        assert (await operator.get("/api/v1/admin/tokens")).status_code == 403

        run = await finished(viewer, run_id)
        assert run["status"] == "completed"
        events = (await viewer.get(f"/api/v1/runs/{run_id}/events")).json()["items"]
        actors = {e["type"]: e["actor"] for e in events}
        assert actors["RunSubmitted"] == "olga"  # the principal, not a header
        assert actors["ApprovalDecided"] == "alice"


async def test_an_approval_names_who_may_decide_among_authenticated_principals(
    server: Server,
) -> None:
    """A token's custom roles reach approvals; X-Aob-Actor no longer names anyone."""
    operator = await server.as_("olga", "operator")
    bob = await server.as_("bob", "approver")
    fin = await server.as_("fin", "approver", "finance")
    async with operator, bob, fin:
        gate = {"approvers": ["carol"], "roles": ["finance"]}
        run_id = (await operator.post("/api/v1/runs", json={"definition": review(gate)})).json()[
            "run_id"
        ]
        approval = await _pending_approval(bob, run_id)
        url = f"/api/v1/approvals/{approval}/decide"
        as_carol = {"X-Aob-Actor": "carol"}
        spoofed = await bob.post(url, json={"decision": "approve"}, headers=as_carol)
        assert spoofed.status_code == 403
        assert "'bob' may not decide" in spoofed.json()["detail"]
        decided = await fin.post(url, json={"decision": "reject", "comments": "no budget"})
        assert decided.status_code == 200
        assert (decided.json()["decided_by"], decided.json()["decision"]) == ("fin", "reject")


async def _pending_approval(client: Any, run_id: str) -> str:
    for _ in range(500):
        items = (await client.get("/api/v1/approvals", params={"run_id": run_id})).json()["items"]
        if items:
            return str(items[0]["approval_id"])
        await _sleep()
    raise AssertionError("no approval")


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.02)


async def test_admins_manage_their_tenants_tokens_over_the_api(server: Server) -> None:
    admin = await server.as_("root", "admin", tenant="acme")
    async with admin:
        assert (await admin.get("/api/v1/whoami")).json() == {
            "name": "root",
            "roles": ["admin"],
            "tenant": "acme",
            "via": "token",
        }
        created = await admin.post(
            "/api/v1/admin/tokens", json={"name": "ci", "roles": ["viewer"], "description": "CI"}
        )
        assert created.status_code == 201
        token = created.json()["token"]
        assert created.json()["tenant"] == "acme"
        listed = (await admin.get("/api/v1/admin/tokens")).json()["items"]
        assert [t["name"] for t in listed] == ["root", "ci"]
        assert token not in str(listed)
        async with server.client(token) as ci:
            assert (await ci.get("/api/v1/runs")).status_code == 200
            other = await admin.post(
                "/api/v1/admin/tokens", json={"name": "x", "roles": ["admin"], "tenant": "beta"}
            )
            assert other.status_code == 403
            bad = await admin.post("/api/v1/admin/tokens", json={"name": "x", "roles": ["Root"]})
            assert bad.status_code == 422
            revoked = await admin.delete(f"/api/v1/admin/tokens/{created.json()['token_id']}")
            assert revoked.status_code == 200
            assert revoked.json()["revoked_at"] is not None
            after = await ci.get("/api/v1/runs")
            assert after.status_code == 401
            assert "revoked" in after.json()["detail"]
        assert (await admin.delete("/api/v1/admin/tokens/nosuch")).status_code == 404


async def test_streams_take_the_token_as_a_query_parameter(server: Server) -> None:
    operator = await server.as_("olga", "operator")
    token = await server.token("vic", "viewer")
    async with operator, server.client() as anonymous:
        run_id = (await operator.post("/api/v1/runs", json={"definition": transform()})).json()[
            "run_id"
        ]
        await finished(operator, run_id)
        url = f"/api/v1/runs/{run_id}/stream"
        assert (await anonymous.get(url, params={"from": "start"})).status_code == 401
        streamed = await anonymous.get(url, params={"from": "start", "access_token": token})
        assert streamed.status_code == 200
        assert "RunCompleted" in streamed.text
        # Elsewhere a token in the URL is not taken (it would end up in access logs).
        elsewhere = await anonymous.get(f"/api/v1/runs/{run_id}", params={"access_token": token})
        assert elsewhere.status_code == 401


def _pem(key: rsa.RSAPrivateKey) -> str:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public.decode()


async def test_a_jwt_from_the_identity_provider_is_a_credential(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = {"auth_jwt_key": _pem(key), "auth_jwt_audience": "aob"}
    async with serving(tmp_path / "data", **settings) as server:
        claims = {"sub": "dana", "tenant": "default", "roles": ["operator"], "aud": "aob"}
        token = jwt.encode({**claims, "exp": int(time.time()) + 60}, key, algorithm="RS256")
        async with server.client(token) as dana:
            submitted = await dana.post("/api/v1/runs", json={"definition": transform()})
            assert submitted.status_code == 202
            assert (await dana.get("/api/v1/whoami")).json()["via"] == "jwt"
        forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode({**claims, "exp": int(time.time()) + 60}, forged_key, "RS256")
        async with server.client(forged) as mallory:
            assert (await mallory.get("/api/v1/runs")).status_code == 401


@pytest.mark.parametrize("credential", ["aob_x", "Bearer", ""])
async def test_refusals_are_counted(server: Server, credential: str) -> None:
    async with server.client() as client:
        await client.get("/api/v1/runs", headers={"Authorization": f"Bearer {credential}"})
        metrics = (await client.get("/metrics")).text
    assert re.search(r'^auth_refusals_total\{reason="unauthenticated"\} [1-9]', metrics, re.M)
