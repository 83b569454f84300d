"""Serving the API with uvicorn, and what `aob server dev` prints and runs once listening."""

from __future__ import annotations

import asyncio

import uvicorn

from aob.platform.api.app import create_app
from aob.platform.demo import DemoRun
from aob.platform.settings import Settings


async def serve_dev(
    settings: Settings, log_level: str, demo: DemoRun | None, *, exit_after: bool
) -> int:
    """Serve until stopped; with `demo`, run it once listening (and stop after, if asked)."""
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, log_level=log_level
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            return 1  # uvicorn has logged why (port in use, ...)
        await asyncio.sleep(0.02)
    base_url = _base_url(server, settings.host)
    print(f"aob dev server listening on {base_url}  (data in {settings.data_dir.resolve()})")
    print(f"  API docs: {base_url}/docs    health: {base_url}/health", flush=True)
    status = "completed"
    if demo is not None:
        status = await demo.run(base_url)
        if exit_after:
            server.should_exit = True
    await serving
    return 0 if status == "completed" else 1


def _base_url(server: uvicorn.Server, host: str) -> str:
    port = server.servers[0].sockets[0].getsockname()[1] if server.servers else 0
    return f"http://{host}:{port}"
