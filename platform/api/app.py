"""The HTTP API: FastAPI app factory, error shape, health and metrics.

Every service is served by this app: the API roles with their routes, the others
(coordinator, projector, workers) with only `/health` and `/metrics`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

import aob
from aob.events.log.bounded import EventTooLarge
from aob.platform.api import (
    approvals,
    diff,
    patches,
    replay,
    runs,
    runs_feed,
    signals,
    stream,
    tools,
    workflows,
)
from aob.platform.api.console import install_console
from aob.platform.api.deps import EngineDep
from aob.platform.auth.security import install as install_security
from aob.platform.commands import Commands
from aob.platform.engine import API_ROLES, Engine
from aob.platform.fanout import FanoutHub
from aob.platform.problems import Problem
from aob.platform.settings import Settings
from aob.platform.tracing import install_tracing

PROBLEM_JSON = "application/problem+json"


def create_app(settings: Settings | None = None, role: str = "dev") -> FastAPI:
    """The app of one service (`role`, see `aob.platform.engine`); its lifespan opens
    and starts the service's engine."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await Engine.open(settings, role)
        try:
            await engine.start()
            app.state.engine = engine
            app.state.commands = Commands(engine)
            app.state.started = time.monotonic()
            if role in API_ROLES:
                app.state.fanout = FanoutHub(engine.log, engine.read_models)
                await app.state.fanout.start()
            yield
        finally:
            if role in API_ROLES and hasattr(app.state, "fanout"):
                await app.state.fanout.stop()
            await engine.stop()

    app = FastAPI(
        title="aob",
        version=aob.__version__,
        description="Agentic workflows on an event-sourced engine.",
        lifespan=lifespan,
        docs_url=None,  # served by install_console, from local assets
        redoc_url=None,
    )
    if role in ("dev", "api"):
        for module in (runs, workflows, replay, diff, approvals, patches, tools, signals):
            app.include_router(module.router)
        install_console(app)  # the web console at /, /docs and /redoc, /api/v1/me
    if role in API_ROLES:
        app.include_router(stream.router)
        app.include_router(runs_feed.router)
    app.add_api_route("/health", health, methods=["GET"], tags=["system"], summary="Health")
    app.add_api_route("/metrics", metrics, methods=["GET"], tags=["system"], summary="Metrics")
    _install_error_handlers(app)
    install_security(app, settings, role)  # auth, roles, bounds, rate limits, metrics
    install_tracing(app, settings, role)  # OpenTelemetry server spans, when tracing is on
    return app


async def health(request: Request, engine: EngineDep) -> JSONResponse:
    """200 when the service's log and read models answer, its hosts run and (API-serving
    roles) its token and rate-limiter stores answer, else 503."""
    dependencies = await engine.dependencies()
    security = getattr(request.app.state, "security", None)
    if security is not None:
        dependencies.update(await security.dependencies())
    ok = all(v == "ok" for v in dependencies.values())
    body = {
        "status": "ok" if ok else "degraded",
        "service": f"aob-{engine.role}",
        "version": aob.__version__,
        "uptime": _uptime(time.monotonic() - request.app.state.started),
        "backends": {
            "event_log": "kafka" if engine.settings.kafka_bootstrap else "embedded",
            "read_models": "postgres" if engine.settings.database_url else "sqlite",
        },
        "dependencies": dependencies,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


async def metrics() -> Response:
    """Prometheus metrics of this process."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _uptime(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m" if hours else f"{minutes}m{secs}s"


def _problem_response(problem: Problem, request: Request) -> JSONResponse:
    return JSONResponse(
        problem.body(request.url.path),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers or None,
    )


def _install_error_handlers(app: FastAPI) -> None:
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

    @app.exception_handler(OverflowError)
    async def on_overflow(request: Request, error: OverflowError) -> JSONResponse:
        # A number of the request past what the stores hold (a bound the routes missed).
        problem = Problem(
            422,
            "number-out-of-range",
            "Number out of range",
            "a number in the request is too large (integers are at most 2^63 - 1)",
        )
        return _problem_response(problem, request)

    @app.exception_handler(RecursionError)
    async def on_too_deep(request: Request, error: RecursionError) -> JSONResponse:
        # Bounds refuses deep bodies up front; this is what slips past, e.g. a deep value
        # built by a patch.
        problem = Problem(
            422,
            "input-out-of-bounds",
            "Request out of bounds",
            "the request nests too deeply to be handled",
        )
        return _problem_response(problem, request)

    @app.exception_handler(EventTooLarge)
    async def on_event_too_large(request: Request, error: EventTooLarge) -> JSONResponse:
        # What the request would record is over the maximum event size: nothing was.
        problem = Problem(413, "event-too-large", "Request too large to record", str(error))
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
