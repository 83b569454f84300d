"""Tenant isolation of everything run-scoped: a principal sees and touches only the
runs of its own tenant, and their node states, events, patches, approvals and streams.

Lists are filtered by the read models (`tenant=`); single resources are checked here,
once for every route under `/api/v1/runs/{id}` and `/api/v1/approvals/{id}`: another
tenant's run or approval answers exactly as one that does not exist (404), so ids of
other tenants cannot even be confirmed. A run's tenant never changes, so it is cached.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final
from urllib.parse import parse_qs

from aob.platform.auth.principal import DEFAULT_TENANT, Principal
from aob.platform.problems import not_found

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_RUN: Final = re.compile(r"^/api/v1/runs/([^/]+)(?:/|$)")
_APPROVAL: Final = re.compile(r"^/api/v1/approvals/([^/]+)(?:/|$)")


class TenantGuard:
    """Refuses (404) requests for runs and approvals of another tenant than the
    principal's. `engine()` gives the engine (its read models and projection waits)."""

    def __init__(self, app: ASGIApp, engine: Callable[[], Any], cache_size: int = 100_000) -> None:
        self.app = app
        self.engine = engine
        self.cache_size = cache_size
        self._tenants: OrderedDict[str, str] = OrderedDict()  # run id -> tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("state", {}).get("principal")
        if scope["type"] in ("http", "websocket") and isinstance(principal, Principal):
            path = scope.get("path", "")
            refusal = await self._refusal(path, scope, principal.tenant)
            if refusal is not None:
                await _not_found(scope, receive, send, path, *refusal)
                return
        await self.app(scope, receive, send)

    async def _refusal(self, path: str, scope: Scope, tenant: str) -> tuple[str, str] | None:
        """(what, id) when the request names a run or approval of another tenant."""
        if path == "/api/v1/approvals":  # one run's approvals, with ?run_id=
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            # Every run_id given: the route reads the last, a check of the first only
            # told whether another tenant's run exists (200 [] against 404).
            for run_id in query.get("run_id", []):
                if await self.run_tenant(run_id) not in (None, tenant):
                    return ("run", run_id)
            return None
        if match := _RUN.match(path):
            owner = await self.run_tenant(match[1])
            return ("run", match[1]) if owner not in (None, tenant) else None
        if match := _APPROVAL.match(path):
            owner = await self._approval_tenant(match[1])
            return ("approval", match[1]) if owner not in (None, tenant) else None
        return None

    async def run_tenant(self, run_id: str) -> str | None:
        """The run's tenant; None when there is no such run (yet)."""
        known = self._tenants.get(run_id)
        if known is not None:
            return known
        engine = self.engine()
        if engine is None:
            return None
        run = await engine.read_models.get_run(run_id)
        if run is None:  # maybe just submitted: let the projector catch up once
            await engine.projected.wait_caught_up(timeout=2.0)
            run = await engine.read_models.get_run(run_id)
        if run is None:
            return None
        tenant = str(run.get("tenant") or DEFAULT_TENANT)
        self._tenants[run_id] = tenant
        if len(self._tenants) > self.cache_size:
            self._tenants.popitem(last=False)
        return tenant

    async def _approval_tenant(self, approval_id: str) -> str | None:
        engine = self.engine()
        if engine is None:
            return None
        approval = await engine.read_models.get_approval(approval_id)
        if approval is None:
            await engine.projected.wait_caught_up(timeout=2.0)
            approval = await engine.read_models.get_approval(approval_id)
        return None if approval is None else await self.run_tenant(approval["run_id"])


async def _not_found(
    scope: Scope, receive: Receive, send: Send, path: str, what: str, ident: str
) -> None:
    """The very answer the API gives for an id that does not exist: over a WebSocket,
    accepted, an `error` message, then close 4404, as the stream route does (refused
    at the handshake, another tenant's run told itself apart from an unknown one)."""
    problem = not_found(what, ident)
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        error = json.dumps({"event": "error", **problem.body()}, separators=(",", ":"))
        await send({"type": "websocket.send", "text": error})
        await send({"type": "websocket.close", "code": 4404, "reason": ""})
        return
    body = json.dumps(problem.body(path)).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})
