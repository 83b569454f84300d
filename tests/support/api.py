"""The real embedded engine behind the real HTTP API, in-process, for tests that drive
aob as a client would. Suites add their own verbs by subclassing `Aob`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from aob.platform.api.app import create_app
from aob.platform.engine import Engine
from aob.platform.settings import Settings

FINISHED = ("completed", "failed", "cancelled")

A = TypeVar("A", bound="Aob")


class Aob:
    """An API client of one running engine; `engine` is there for what the API hides."""

    def __init__(self, client: httpx.AsyncClient, engine: Engine) -> None:
        self.client = client
        self.engine = engine

    async def submit(self, definition: dict[str, Any], inputs: Any = None) -> str:
        body = {"definition": definition, "inputs": inputs or {}}
        response = await self.client.post("/api/v1/runs", json=body)
        assert response.status_code == 202, response.text
        run_id: str = response.json()["run_id"]
        return run_id

    async def run(self, run_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        return run

    async def until(
        self, run_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """The run once `done(run)` holds (polled: the API is what is under test)."""
        async with asyncio.timeout(timeout):
            while True:
                run = await self.run(run_id)
                if done(run):
                    return run
                await asyncio.sleep(0.02)

    async def finished(self, run_id: str, timeout: float = 15.0) -> dict[str, Any]:
        return await self.until(run_id, lambda run: run["status"] in FINISHED, timeout)

    async def events(self, run_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"/api/v1/runs/{run_id}/events")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def events_of(self, run_id: str, kind: str) -> list[dict[str, Any]]:
        return [e["data"] for e in await self.events(run_id) if e["type"] == kind]


@asynccontextmanager
async def running(settings: Settings, client_type: type[A]) -> AsyncIterator[A]:
    """The app with its lifespan (engine started, then stopped on exit)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://aob") as client:
            yield client_type(client, app.state.engine)


def node(run: dict[str, Any], node_id: str) -> dict[str, Any]:
    """The one node run of `node_id` in `run`."""
    found: list[dict[str, Any]] = [n for n in run["nodes"] if n["node_id"] == node_id]
    assert len(found) == 1, f"{node_id!r} in {run['nodes']}"
    return found[0]


__all__ = ["FINISHED", "Aob", "Path", "node", "running"]
