"""Authentication and authorization of every API request, as one ASGI middleware.

Each request's credential (`Authorization: Bearer ...`; stream endpoints also take
`?access_token=`, since browsers' EventSource and WebSocket cannot send headers) is
turned into a `Principal`, kept in the request's state (`principal_of`), and checked
against the permission the route needs (`required_permission`). Refusals are
problem+json: 401 with `WWW-Authenticate: Bearer`, 403 naming the permission. A
WebSocket is refused before it is accepted (close code 1008, policy violation).

One middleware rather than a dependency per router: routes added later are covered
without anyone remembering to, and the whole policy is one table, tested as such.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final
from urllib.parse import parse_qs

from starlette.requests import HTTPConnection

from aob.platform.auth.authenticator import Authenticator
from aob.platform.auth.jwt import Unauthenticated
from aob.platform.auth.principal import (
    ADMIN,
    DEFAULT_TENANT,
    ROLE_NAME,
    Permission,
    Principal,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS: Final = frozenset(
    {"/", "/health", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
# The web console's assets (aob.platform.api.console): code and styles, no data.
PUBLIC_PREFIXES: Final = ("/console/",)
# A run's streams, and the runs feed (aob.platform.api.runs_feed).
_STREAM_PATH: Final = re.compile(r"^/api/v1/(runs/[^/]+/(stream|ws)|streams/runs)$")
# (method or None for any, path pattern, permission): the first match decides.
_RULES: Final[tuple[tuple[str | None, re.Pattern[str], Permission], ...]] = (
    (None, re.compile(r"^/api/v1/admin(/|$)"), Permission.ADMIN),
    ("POST", re.compile(r"^/api/v1/approvals/[^/]+/decide$"), Permission.APPROVE),
    (
        "POST",
        re.compile(r"^/api/v1/runs/[^/]+/patches/[^/]+/(approve|reject)$"),
        Permission.APPROVE,
    ),
    ("POST", re.compile(r"^/api/v1/workflows/validate$"), Permission.READ),  # stores nothing
)
_READ_METHODS: Final = frozenset({"GET", "HEAD"})
PROBLEM_JSON: Final = "application/problem+json"


def required_permission(method: str, path: str) -> Permission | None:
    """What a request needs; None for public endpoints (health, metrics, docs, CORS
    preflights, which browsers send without credentials)."""
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or method == "OPTIONS":
        return None
    for rule_method, pattern, permission in _RULES:
        if rule_method in (None, method) and pattern.match(path):
            return permission
    return Permission.READ if method in _READ_METHODS else Permission.OPERATE


def principal_of(connection: HTTPConnection) -> Principal:
    """The request's authenticated principal (set by `AuthMiddleware`)."""
    principal = connection.scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):
        raise RuntimeError("no principal: AuthMiddleware is not installed")
    return principal


class AuthMiddleware:
    """Authenticates and authorizes every HTTP and WebSocket request of `app`.

    `authenticator()` gives the checker (it opens with the app's lifespan). With
    `enabled` False, authentication is off (tests, trusted setups): callers name
    themselves with X-Aob-Actor / X-Aob-Roles as before, hold every permission and
    belong to the default tenant.
    """

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Callable[[], Authenticator | None],
        *,
        enabled: bool = True,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.enabled = enabled
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        method = scope.get("method", "GET")  # a WebSocket reads
        needed = required_permission(method, connection.url.path)
        if not self.enabled:
            scope.setdefault("state", {})["principal"] = _self_declared(connection)
        elif needed is not None:
            refusal = await self._check(connection, needed)
            if refusal is not None:
                status, body, headers = refusal
                if self.on_refusal is not None:
                    self.on_refusal(
                        {401: "unauthenticated", 403: "forbidden"}.get(status, "unavailable")
                    )
                await _refuse(scope, receive, send, status, body, headers)
                return
        await self.app(scope, receive, send)

    async def _check(
        self, connection: HTTPConnection, needed: Permission
    ) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        authenticator = self.authenticator()
        if authenticator is None:
            detail = "the server is starting or stopping; try again"
            return 503, _problem(503, "unavailable", "Not ready", detail), {"Retry-After": "1"}
        credential = _credential(connection)
        challenge = {"WWW-Authenticate": 'Bearer realm="aob"'}
        if credential is None:
            detail = "this endpoint needs a credential: send 'Authorization: Bearer <token>'"
            return (
                401,
                _problem(401, "unauthenticated", "Authentication required", detail),
                challenge,
            )
        try:
            principal = await authenticator.authenticate(credential)
        except Unauthenticated as error:
            challenge["WWW-Authenticate"] += ', error="invalid_token"'
            return (
                401,
                _problem(401, "unauthenticated", "Invalid credential", str(error)),
                challenge,
            )
        if not principal.may(needed):
            detail = (
                f"{principal.name!r} (roles {sorted(principal.roles)}) may not do this: it "
                f"needs the {needed.value!r} permission"
            )
            body = _problem(403, "forbidden", "Not allowed", detail, needs=needed.value)
            return 403, body, {}
        connection.scope.setdefault("state", {})["principal"] = principal
        return None


def _credential(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if _STREAM_PATH.match(connection.url.path):
        tokens = parse_qs(connection.scope.get("query_string", b"").decode("latin-1")).get(
            "access_token"
        )
        if tokens:
            return str(tokens[0])
    return None


def _self_declared(connection: HTTPConnection) -> Principal:
    """Authentication off: the caller's own word (as before authentication existed)."""
    name = connection.headers.get("x-aob-actor", "anonymous")[:128] or "anonymous"
    declared = connection.headers.get("x-aob-roles", "")[:1024].split(",")
    roles = {r.strip() for r in declared if ROLE_NAME.match(r.strip())}
    return Principal(name, frozenset(roles | {ADMIN}), DEFAULT_TENANT, via="none")


def _problem(status: int, slug: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"https://aob.dev/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
) -> None:
    if scope["type"] == "websocket":
        # Closing before accepting makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": body["title"]})
        return
    body["instance"] = scope.get("path", "")
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(payload)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
