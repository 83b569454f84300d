"""Helpers of the streamed-output tests: the embedded engine behind its API on a real
loopback port (SSE needs a real server: httpx's ASGI transport buffers bodies), and
an SSE reader that keeps the cursors streams with deltas use as ids."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from aob.platform.api.app import create_app
from aob.platform.settings import Settings


@dataclass
class Frame:
    event: str
    data: dict[str, Any]
    id: str | None


@dataclass
class Read:
    frames: list[Frame] = field(default_factory=list)

    def deltas(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            f.data
            for f in self.frames
            if f.event == "llm_delta" and (kind is None or f.data["kind"] == kind)
        ]

    def text(self, node_id: str | None = None) -> str:
        return "".join(
            d["data"]["text"] for d in self.deltas("text") if node_id in (None, d["node_id"])
        )

    def events(self) -> list[str]:
        return [f.event for f in self.frames]

    @property
    def last_id(self) -> str | None:
        ids = [f.id for f in self.frames if f.id is not None]
        return ids[-1] if ids else None


async def read_sse(
    client: httpx.AsyncClient,
    run_id: str,
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    stop: Callable[[Read], bool] | None = None,
    on_frame: Callable[[Read], Awaitable[None]] | None = None,
) -> Read:
    """Read the run's stream until it ends or `stop(read)` holds (then disconnect)."""
    out = Read()
    url = f"/api/v1/runs/{run_id}/stream"
    query = {"deltas": "true", **(params or {})}
    async with client.stream("GET", url, params=query, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "data" in fields:
                out.frames.append(
                    Frame(
                        fields.get("event", "message"), json.loads(fields["data"]), fields.get("id")
                    )
                )
                if on_frame is not None:
                    await on_frame(out)
                if out.frames[-1].event == "end" or (stop is not None and stop(out)):
                    return out
            fields = {}
    return out


@dataclass
class Served:
    base_url: str
    app: Any

    @property
    def engine(self) -> Any:
        return self.app.state.engine

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=30)

    async def submit(self, definition: dict[str, Any]) -> str:
        async with self.client() as client:
            response = await client.post("/api/v1/runs", json={"definition": definition})
            assert response.status_code == 202, response.text
            return str(response.json()["run_id"])

    async def run(self, run_id: str) -> dict[str, Any]:
        async with self.client() as client:
            response = await client.get(f"/api/v1/runs/{run_id}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

    async def events(self, run_id: str) -> list[dict[str, Any]]:
        async with self.client() as client:
            response = await client.get(f"/api/v1/runs/{run_id}/events", params={"limit": 1000})
            assert response.status_code == 200, response.text
            items: list[dict[str, Any]] = response.json()["items"]
            return items


@contextlib.asynccontextmanager
async def served_aob(data_dir: Path, llm_base_url: str, **settings: Any) -> AsyncIterator[Served]:
    """`aob server dev`'s app (auth off) with its lifespan, on a free loopback port."""
    options: dict[str, Any] = {
        "auth": "off",
        "rate_limit": False,
        "llm_max_retries": 0,
        "llm_max_wall_ms": 60_000,
        **settings,
    }
    app = create_app(Settings(data_dir=data_dir, llm_base_url=llm_base_url, **options))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the test server did not start"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Served(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        await task


async def until(condition: Callable[[], Awaitable[Any]], what: str, timeout: float = 20.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            result = await condition()
            if result:
                return result
            await asyncio.sleep(0.02)
    raise AssertionError(what)
