"""The HTTP API: FastAPI app factory, error shape, health."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import aob
from aob.platform.api import approvals, patches, replay, runs, stream, tools, workflows
from aob.platform.api.deps import EngineDep
from aob.platform.commands import Commands
from aob.platform.engine import Engine
from aob.platform.fanout import FanoutHub
from aob.platform.problems import Problem
from aob.platform.settings import Settings

PROBLEM_JSON = "application/problem+json"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await Engine.open(settings)
        await engine.start()
        app.state.engine = engine
        app.state.commands = Commands(engine)
        app.state.started = time.monotonic()
        app.state.fanout = FanoutHub(engine.log, engine.read_models)
        await app.state.fanout.start()
        try:
            yield
        finally:
            await app.state.fanout.stop()
            await engine.stop()

    app = FastAPI(
        title="aob",
        version=aob.__version__,
        description="Agentic workflows on an event-sourced engine.",
        lifespan=lifespan,
    )
    app.include_router(runs.router)
    app.include_router(workflows.router)
    app.include_router(stream.router)
    app.include_router(replay.router)
    app.include_router(approvals.router)
    app.include_router(patches.router)
    app.include_router(tools.router)
    app.add_api_route("/health", health, methods=["GET"], tags=["system"], summary="Health")
    _install_error_handlers(app, settings.max_request_bytes)
    return app


async def health(request: Request, engine: EngineDep) -> dict[str, Any]:
    dependencies = {"event_log": "ok", "read_models": "ok"}
    try:
        await engine.log.end_offsets("aob.runs")
    except Exception as error:
        dependencies["event_log"] = f"error: {error}"
    try:
        engine.read_models.offsets()
    except Exception as error:
        dependencies["read_models"] = f"error: {error}"
    ok = all(v == "ok" for v in dependencies.values())
    return {
        "status": "ok" if ok else "degraded",
        "service": "aob-dev",
        "version": aob.__version__,
        "uptime": _uptime(time.monotonic() - request.app.state.started),
        "dependencies": dependencies,
    }


def _uptime(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m" if hours else f"{minutes}m{secs}s"


def _problem_response(problem: Problem, request: Request) -> JSONResponse:
    return JSONResponse(
        problem.body(request.url.path), status_code=problem.status, media_type=PROBLEM_JSON
    )


def _install_error_handlers(app: FastAPI, max_request_bytes: int) -> None:
    @app.exception_handler(Problem)
    async def on_problem(request: Request, problem: Problem) -> JSONResponse:
        return _problem_response(problem, request)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {"path": "/" + "/".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in error.errors()
        ]
        problem = Problem(
            422,
            "invalid-request",
            "Invalid request",
            f"the request has {len(errors)} problem(s)",
            errors=errors,
        )
        return _problem_response(problem, request)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(error.status_code, "http-error")
        problem = Problem(error.status_code, slug, str(error.detail), str(error.detail))
        return _problem_response(problem, request)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, error: Exception) -> JSONResponse:
        problem = Problem(
            500,
            "internal-error",
            "Internal error",
            "the server failed to handle this request; see its log",
        )
        return _problem_response(problem, request)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_request_bytes):
            problem = Problem(
                413,
                "payload-too-large",
                "Request body too large",
                f"the request body exceeds {max_request_bytes} bytes",
            )
            return _problem_response(problem, request)
        return await call_next(request)
