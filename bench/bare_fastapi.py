"""The baseline of `bench.http_submit`: a bare FastAPI app that parses the body of a run
submission as aob does (the same pydantic model shape) and answers 202 with a run id,
recording nothing. Served by uvicorn as aob is, in its own process:

    python -m bench.bare_fastapi --port 8001

It prints `bare FastAPI listening on http://127.0.0.1:<port>` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class SubmitRun(BaseModel):
    """The same fields and bounds as aob's submission body."""

    definition: dict[str, Any] | None = None
    tag: str | None = Field(default=None, max_length=128)
    workflow_id: str | None = Field(default=None, max_length=128)
    version: int | None = Field(default=None, ge=1)
    inputs: Any = Field(default_factory=dict)


def create_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/api/v1/runs", status_code=202)
    async def submit(body: SubmitRun) -> JSONResponse:
        run_id = f"run_{uuid.uuid4().hex}"
        accepted = {"run_id": run_id, "status": "accepted", "trace_id": uuid.uuid4().hex}
        return JSONResponse(
            accepted, status_code=202, headers={"Location": f"/api/v1/runs/{run_id}"}
        )

    return app


async def serve(port: int, log_level: str) -> None:
    # IPPROTO_TCP named, as aob's server names it (from getaddrinfo): asyncio turns
    # Nagle's algorithm off only on sockets whose protocol says TCP, and with it on
    # every answer (headers and body, two writes) waits ~40 ms for the client's
    # delayed ACK, which capped this baseline at ~22 answers/s per connection.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    config = uvicorn.Config(create_app(), log_level=log_level, access_log=False)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        if serving.done():
            return
        await asyncio.sleep(0.01)
    host, bound = listener.getsockname()[:2]
    print(f"bare FastAPI listening on http://{host}:{bound}", flush=True)
    await serving


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_fastapi", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0: a free port (default)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.log_level))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
