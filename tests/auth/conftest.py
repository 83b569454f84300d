"""The real embedded server with authentication on, and clients holding tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from aob.platform.api.app import create_app
from aob.platform.auth.security import Security
from aob.platform.engine import Engine
from aob.platform.settings import Settings


class Server:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.transport = httpx.ASGITransport(app=app)

    @property
    def engine(self) -> Engine:
        engine: Engine = self.app.state.engine
        return engine

    @property
    def security(self) -> Security:
        security: Security = self.app.state.security
        return security

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(transport=self.transport, base_url="http://aob", headers=headers)

    async def token(self, name: str, *roles: str, tenant: str = "default") -> str:
        assert self.security.authenticator is not None
        token, _ = await self.security.authenticator.issue(name, tenant, roles, created_by="test")
        return token

    async def as_(self, name: str, *roles: str, tenant: str = "default") -> httpx.AsyncClient:
        return self.client(await self.token(name, *roles, tenant=tenant))


@asynccontextmanager
async def serving(data_dir: Path, **settings: Any) -> AsyncIterator[Server]:
    options: dict[str, Any] = {
        "auth": "tokens",
        "rate_limit": False,
        "workers": ["builtin", "hitl"],
    }
    options.update(settings)
    app = create_app(Settings(data_dir=data_dir, **options))
    async with app.router.lifespan_context(app):
        yield Server(app)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with serving(tmp_path / "data") as running:
        yield running


def transform(name: str = "t", agents: int = 0) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [{"id": "a", "type": "transform", "config": {"expr": '"ok"'}}]
    agent = {"type": "agent", "config": {"prompt": "go"}}  # a prompt: its schema needs one
    nodes += [{"id": f"agent{i}", **agent} for i in range(agents)]
    return {"name": name, "nodes": nodes, "output": ".nodes.a"}


async def finished(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    for _ in range(500):
        run: dict[str, Any] = (await client.get(f"/api/v1/runs/{run_id}")).json()
        if run["status"] in ("completed", "failed", "cancelled"):
            return run
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not finish")
