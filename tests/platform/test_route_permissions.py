"""Permissions are declared on each route (`dependencies=[require(Permission.X)]`): every
API route of every serving role declares one, except the documented public ones, and
the declaration is what the server enforces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from aob.platform.api.app import create_app
from aob.platform.auth import OPERATOR, VIEWER, Authenticator, Permission
from aob.platform.auth.http import (
    PUBLIC_PATHS,
    PUBLIC_PREFIXES,
    declared_permission,
    leaf_routes,
    require,
    required_permission,
)
from aob.platform.settings import Settings

SERVING_ROLES = ("dev", "api", "fanout")


def undeclared(app: FastAPI) -> list[str]:
    """The routes of `app` that declare no permission and are not public."""
    missing = []
    for route in leaf_routes(app.router.routes):
        if isinstance(route, Mount):
            assert route.path.rstrip("/") + "/" in PUBLIC_PREFIXES, route.path
            continue
        assert isinstance(route, (Route, WebSocketRoute)), route
        methods = getattr(route, "methods", None) or {"WEBSOCKET"}
        if route.path in PUBLIC_PATHS or methods <= {"OPTIONS"}:  # CORS preflights
            continue
        if declared_permission(route) is None:
            missing.append(f"{sorted(methods)} {route.path}")
    return missing


@pytest.mark.parametrize("role", SERVING_ROLES)
def test_every_api_route_declares_its_permission(role: str, tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path), role)
    paths = [getattr(r, "path", "") for r in leaf_routes(app.router.routes)]
    assert any(path.startswith("/api/") for path in paths)  # the role serves an API
    assert undeclared(app) == []


def test_a_route_added_without_a_permission_is_found(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))

    async def forgotten() -> dict[str, str]:
        return {}

    app.add_api_route("/api/v1/forgotten", forgotten, methods=["POST"])
    assert undeclared(app) == ["['POST'] /api/v1/forgotten"]


def test_the_public_routes_are_the_documented_ones(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    public = {
        route.path
        for route in leaf_routes(app.router.routes)
        if isinstance(route, Route)
        and declared_permission(route) is None
        and not (route.methods or set()) <= {"OPTIONS"}  # CORS preflights
    }
    assert public <= PUBLIC_PATHS
    assert {"/health", "/metrics", "/", "/docs", "/redoc", "/openapi.json"} <= public


def _routes(tmp_path: Path) -> list[BaseRoute]:
    return create_app(Settings(data_dir=tmp_path)).router.routes


def test_what_a_request_needs_is_its_routes_declaration(tmp_path: Path) -> None:
    routes = _routes(tmp_path)
    assert required_permission("POST", "/api/v1/runs/r/cancel", routes) is Permission.OPERATE
    assert required_permission("POST", "/api/v1/approvals/a/decide", routes) is Permission.APPROVE
    assert required_permission("GET", "/api/v1/admin/tokens", routes) is Permission.ADMIN
    assert required_permission("GET", "/health", routes) is None
    # No route: a credential is needed, then the router answers 404.
    assert required_permission("DELETE", "/api/v1/nothing", routes) is Permission.READ


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, dict[str, str]]]:
    """A dev app with authentication on, an extra route declaring OPERATE, and a token
    per role."""
    settings = Settings(data_dir=tmp_path / "data", auth="tokens")
    app = create_app(settings)

    async def operate() -> dict[str, str]:
        return {"done": "yes"}

    app.add_api_route(
        "/api/v1/extra", operate, methods=["POST"], dependencies=[require(Permission.OPERATE)]
    )
    async with app.router.lifespan_context(app):
        authenticator = app.state.security.authenticator
        assert isinstance(authenticator, Authenticator)
        tokens = {
            role: (await authenticator.issue(role, "default", [role], created_by="test"))[0]
            for role in (VIEWER, OPERATOR)
        }
        yield app, tokens


async def test_the_declared_permission_is_enforced(
    guarded: tuple[FastAPI, dict[str, str]],
) -> None:
    app, tokens = guarded
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://aob") as client:
        viewer = {"Authorization": f"Bearer {tokens[VIEWER]}"}
        operator = {"Authorization": f"Bearer {tokens[OPERATOR]}"}
        refused = await client.post("/api/v1/extra", headers=viewer)
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["needs"] == "operate"
        allowed = await client.post("/api/v1/extra", headers=operator)
        assert (allowed.status_code, allowed.json()) == (200, {"done": "yes"})
        # A real route, the same way: a viewer may read runs, not submit one.
        assert (await client.get("/api/v1/runs", headers=viewer)).status_code == 200
        submit = await client.post("/api/v1/runs", headers=viewer, json={"definition": {}})
        assert submit.status_code == 403
        assert submit.json()["needs"] == "operate"
