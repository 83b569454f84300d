"""Authentication and authorization of every API request.

Each route declares the permission it needs, as a FastAPI dependency:
`dependencies=[require(Permission.OPERATE)]`. A test enumerates the app's routes and
fails for any API route without one (the public ones are `PUBLIC_PATHS` and
`PUBLIC_PREFIXES`: health, metrics, the console and the API docs; and CORS preflights).

`AuthMiddleware` turns each request's credential (`Authorization: Bearer ...`; stream
endpoints also take `?access_token=`, since browsers' EventSource and WebSocket cannot
send headers) into a `Principal`, kept in the request's state (`principal_of`), and
refuses it early, before bounds, rate limits or the body are read, when the route it
is for declares a permission the principal lacks (`required_permission` reads the
declaration off the matching route); the route's dependency checks it again. Refusals
are problem+json: 401 with `WWW-Authenticate: Bearer`, 403 naming the permission. A
WebSocket is refused before it is accepted (close code 1008, policy violation).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any, Final
from urllib.parse import parse_qs

from fastapi import Depends
from starlette.exceptions import WebSocketException
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Match

from aob.platform.auth.authenticator import Authenticator
from aob.platform.auth.jwt import Unauthenticated
from aob.platform.auth.principal import (
    ADMIN,
    DEFAULT_TENANT,
    ROLE_NAME,
    Permission,
    Principal,
)
from aob.platform.problems import Problem

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
PROBLEM_JSON: Final = "application/problem+json"
# Characters a Starlette URL escapes or drops from a path (see `url_path`).
_URL_CHANGES: Final = re.compile(r"[?#\\\t\r\n]")
# Permissions of recent (method, path) pairs an AuthMiddleware keeps: finding a
# request's route among the app's costs ~50 us, a tenth of a submit's HTTP handling.
KNOWN_PATHS_MAX: Final = 4096


class Require:
    """The dependency a route declares for the permission it needs: refuses (403, or
    a WebSocket closed with 1008) a principal without it; gives the principal."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    async def __call__(self, connection: HTTPConnection) -> Principal:
        principal = principal_of(connection)
        if not principal.may(self.permission):
            if connection.scope["type"] == "websocket":
                raise WebSocketException(1008, "Not allowed")
            raise Problem(
                403,
                "forbidden",
                "Not allowed",
                refusal_detail(principal, self.permission),
                needs=self.permission.value,
            )
        return principal


def require(permission: Permission | str) -> Any:
    """`Depends(...)` checking `permission`, for a route's `dependencies=[...]`."""
    return Depends(Require(Permission(permission)))


def declared_permission(route: BaseRoute) -> Permission | None:
    """The permission `route` declares with `require` (None: it declares none)."""
    for dependency in getattr(route, "dependencies", None) or ():
        if isinstance(dependency.dependency, Require):
            return dependency.dependency.permission
    return None


def leaf_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """`routes` with each included router replaced by its own routes (FastAPI keeps an
    included router as one route that delegates to it)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from leaf_routes(included.routes)
        else:
            yield route


def is_public(method: str, path: str) -> bool:
    """Health, metrics, docs, the console's assets, and CORS preflights (which browsers
    send without credentials)."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or method == "OPTIONS"


def required_permission(
    method: str, path: str, routes: list[BaseRoute] | None = None, scope: Scope | None = None
) -> Permission | None:
    """What a request needs: None for public endpoints, else the permission its route
    declares. A request no route serves (answered 404/405) needs a credential only:
    READ, which every role holds."""
    if is_public(method, path):
        return None
    probe = scope or {"type": "http", "method": method, "path": path, "root_path": ""}
    for route in leaf_routes(routes or ()):
        match, _ = route.matches(probe)
        if match is Match.FULL:
            return declared_permission(route) or Permission.READ
    return Permission.READ


def refusal_detail(principal: Principal, needed: Permission) -> str:
    return (
        f"{principal.name!r} (roles {sorted(principal.roles)}) may not do this: it "
        f"needs the {needed.value!r} permission"
    )


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
        self._needed: dict[tuple[str, str, str], Permission | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        method = scope.get("method", "GET")  # a WebSocket reads
        path = url_path(scope)
        needed = self._permission(method, path, scope)
        if not self.enabled:
            scope.setdefault("state", {})["principal"] = _self_declared(connection)
        elif needed is not None:
            refusal = await self._check(connection, path, needed)
            if refusal is not None:
                status, body, headers = refusal
                if self.on_refusal is not None:
                    self.on_refusal(
                        {401: "unauthenticated", 403: "forbidden"}.get(status, "unavailable")
                    )
                await _refuse(scope, receive, send, status, body, headers)
                return
        await self.app(scope, receive, send)

    def _permission(self, method: str, path: str, scope: Scope) -> Permission | None:
        """What the request needs (see `required_permission`), remembered per method and
        path: the app's routes do not change once it serves."""
        key = (method, path, str(scope.get("root_path", "")))
        if key in self._needed:
            return self._needed[key]
        routes = getattr(getattr(scope.get("app"), "router", None), "routes", None)
        needed = required_permission(method, path, routes, scope)
        if len(self._needed) >= KNOWN_PATHS_MAX:
            self._needed.clear()  # paths with ids in them come and go: start afresh
        self._needed[key] = needed
        return needed

    async def _check(
        self, connection: HTTPConnection, path: str, needed: Permission
    ) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        authenticator = self.authenticator()
        if authenticator is None:
            detail = "the server is starting or stopping; try again"
            return 503, _problem(503, "unavailable", "Not ready", detail), {"Retry-After": "1"}
        credential = _credential(connection.scope, path)
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
            detail = refusal_detail(principal, needed)
            body = _problem(403, "forbidden", "Not allowed", detail, needs=needed.value)
            return 403, body, {}
        connection.scope.setdefault("state", {})["principal"] = principal
        return None


def url_path(scope: Scope) -> str:
    """`HTTPConnection(scope).url.path` without building the URL (a tenth of the
    middleware's time) when the path has nothing that building it would change."""
    path = scope.get("path", "")
    if (
        isinstance(path, str)
        and path.startswith("/")
        and not path.startswith("//")
        and not _URL_CHANGES.search(path)
    ):
        return path
    return HTTPConnection(scope).url.path


def _header(scope: Scope, name: bytes) -> str:
    """The first `name` header's value (`name` lower case, as servers give names), as
    Starlette's `Headers.get` reads it, without copying the headers."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def _credential(scope: Scope, path: str) -> str | None:
    header = _header(scope, b"authorization")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if _STREAM_PATH.match(path):
        tokens = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("access_token")
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
