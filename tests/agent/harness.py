"""The real embedded engine behind the real API, with agent nodes against the scripted LLM."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from aob.platform.api.app import create_app
from aob.platform.engine import Engine
from aob.platform.settings import Settings

FINISHED = ("completed", "failed", "cancelled")


class Aob:
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

    async def until(self, run_id: str, done: Callable[[dict[str, Any]], bool],
                    timeout: float = 15.0) -> dict[str, Any]:
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


@contextlib.asynccontextmanager
async def running_aob(data_dir: Path, llm_base_url: str, **settings: Any) -> AsyncIterator[Aob]:
    options: dict[str, Any] = {"llm_max_retries": 2, "llm_max_wall_ms": 20_000, **settings}
    app = create_app(Settings(data_dir=data_dir, llm_base_url=llm_base_url, **options))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://aob") as client:
            yield Aob(client, app.state.engine)


@contextlib.asynccontextmanager
async def serving_app(app: Starlette) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the test server did not start"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def agent(node_id: str, prompt: str, **config: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "agent", "config": {"prompt": prompt, **config}}


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def node(run: dict[str, Any], node_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [n for n in run["nodes"] if n["node_id"] == node_id]
    assert len(found) == 1, f"{node_id!r} in {run['nodes']}"
    return found[0]
