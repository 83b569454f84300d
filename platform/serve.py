"""Serving the services with uvicorn, what `aob server dev` prints and runs once
listening, and the audit commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import cast

import uvicorn
from fastapi import FastAPI

from aob.events.log.port import EventLog, LogError
from aob.platform.api.app import create_app
from aob.platform.audit import fresh_read_models, run_history, verify
from aob.platform.auth.security import admin_token_help, local_admin_token
from aob.platform.demo import DemoRun
from aob.platform.engine import Engine, check_role, open_log, open_read_models
from aob.platform.settings import Settings

EXIT_HOST_DIED = 70  # EX_SOFTWARE, as the faust coordinator exits when a step fails


async def serve_dev(
    settings: Settings, log_level: str, demo: DemoRun | None, *, exit_after: bool
) -> int:
    """Serve until stopped; with `demo`, run it once listening (and stop after, if asked)."""
    token = await local_admin_token(settings)  # None when AOB_AUTH=off
    server, serving = await _listening(settings, "dev", log_level)
    if server is None:
        return 1
    base_url = _base_url(server, settings.host)
    print(f"aob dev server listening on {base_url}  (data in {settings.data_dir.resolve()})")
    print(f"  API docs: {base_url}/docs    health: {base_url}/health", flush=True)
    if token is not None:
        print(admin_token_help(token, base_url), flush=True)
    status = "completed"
    if demo is not None:
        status = await demo.run(base_url, token)
        if exit_after:
            server.should_exit = True
    await serving
    if _died(server):
        return EXIT_HOST_DIED
    return 0 if status == "completed" else 1


async def serve_service(settings: Settings, role: str, log_level: str) -> int:
    """Serve one cluster service (see `aob.platform.engine`) until stopped."""
    check_role(settings, role)  # the command line checked it: this is for other callers
    server, serving = await _listening(settings, role, log_level)
    if server is None:
        return 1
    base_url = _base_url(server, settings.host)
    print(
        f"aob {role} service listening on {base_url}  (Kafka at {settings.kafka_bootstrap}, "
        f"topic prefix {settings.topic_prefix!r})",
        flush=True,
    )
    await serving
    return EXIT_HOST_DIED if _died(server) else 0


async def _listening(
    settings: Settings, role: str, log_level: str
) -> tuple[uvicorn.Server | None, asyncio.Task[None]]:
    """The server, once it listens (None if it stopped first), and its serving task."""
    config = uvicorn.Config(
        create_app(settings, role),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        # JSON log lines: uvicorn's records go to the root logger's JSON handler.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            return None, serving  # uvicorn has logged why (port in use, no broker, ...)
        await asyncio.sleep(0.02)
    engine = _engine(server)
    if engine is not None:
        watch = asyncio.create_task(_exit_when_a_host_dies(server, engine))
        serving.add_done_callback(lambda _: watch.cancel())
    return server, serving


async def _exit_when_a_host_dies(server: uvicorn.Server, engine: Engine) -> None:
    """A dead host (its /health already says 503) stops the server, so that the process
    exits non-zero and its supervisor restarts it: it never serves on half-working."""
    await engine.died.wait()
    print(
        f"aob {engine.role}: a host died ({'; '.join(engine.crashed)}); stopping, "
        f"exit code {EXIT_HOST_DIED}",
        file=sys.stderr,
        flush=True,
    )
    server.should_exit = True


def _engine(server: uvicorn.Server) -> Engine | None:
    """The engine the app's lifespan started (None if it has none)."""
    app = cast(FastAPI, server.config.app)
    engine = getattr(app.state, "engine", None)
    return engine if isinstance(engine, Engine) else None


def _died(server: uvicorn.Server) -> bool:
    engine = _engine(server)
    return engine is not None and engine.died.is_set()


def _base_url(server: uvicorn.Server, host: str) -> str:
    port = server.servers[0].sockets[0].getsockname()[1] if server.servers else 0
    return f"http://{host}:{port}"


# --- audit -------------------------------------------------------------------------------


async def run_audit(settings: Settings, args: argparse.Namespace) -> int:
    """`aob server audit history RUN` and `aob server audit verify`."""
    where = f"aob server audit {args.action}"
    if settings.kafka_bootstrap is None and not (settings.data_dir / "log.db").exists():
        print(f"{where}: no embedded log in {settings.data_dir.resolve()}", file=sys.stderr)
        return 2
    try:
        event_log = await open_log(settings, "audit")
    except LogError as error:
        print(f"{where}: cannot open the log: {error}", file=sys.stderr)
        return 2
    try:
        if args.action == "history":
            return await _history(event_log, args.run_id, as_json=args.json)
        return await _verify(settings, event_log, keep=args.keep)
    finally:
        await event_log.close()


async def _history(event_log: EventLog, run_id: str, *, as_json: bool) -> int:
    events = await run_history(event_log, run_id)
    if not events:
        print(f"aob server audit history: the log holds no run {run_id!r}", file=sys.stderr)
        return 1
    for event in events:
        if as_json:
            print(json.dumps(event, ensure_ascii=False))
        else:
            data = json.dumps(event["data"], ensure_ascii=False)
            print(
                f"{event['offset']:>8}  {event['occurred_at']}  {event['type']:<20} "
                f"{event['actor'] or '-':<22} {data:.100}"
            )
    return 0


async def _verify(settings: Settings, event_log: EventLog, *, keep: bool) -> int:
    live = await open_read_models(settings)
    try:
        async with fresh_read_models(settings, keep=keep) as (fresh, where):
            outcome = await verify(event_log, live, fresh)
            if keep:
                print(f"rebuilt read models kept in {where}")
    finally:
        await live.close()
    print(outcome.summary())
    return 0 if outcome.equal else 1
