"""The real embedded engine behind the real API, with agent nodes against the scripted LLM."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from aob.platform.settings import Settings
from tests.support.api import FINISHED, Aob, node, running

__all__ = ["FINISHED", "Aob", "agent", "call", "node", "running_aob", "serving_app"]


@contextlib.asynccontextmanager
async def running_aob(data_dir: Path, llm_base_url: str, **settings: Any) -> AsyncIterator[Aob]:
    options: dict[str, Any] = {"llm_max_retries": 2, "llm_max_wall_ms": 20_000, **settings}
    configured = Settings(data_dir=data_dir, llm_base_url=llm_base_url, **options)
    async with running(configured, Aob) as aob:
        yield aob


@contextlib.asynccontextmanager
async def serving_app(app: Starlette) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port; yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False
    )
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
