"""Serving the services with uvicorn, what `aob server dev` prints and runs once
listening, and the audit commands."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import logging
import os
import socket
import sys
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI

from aob.events.log.port import EventLog, LogError
from aob.platform.api.app import create_app
from aob.platform.audit import fresh_read_models, run_history, verify
from aob.platform.auth.security import admin_token_help, local_admin_token
from aob.platform.demo import DemoRun
from aob.platform.engine import (
    ConfigError,
    Engine,
    check_role,
    inline_work,
    open_log,
    open_read_models,
)
from aob.platform.settings import Settings

EXIT_HOST_DIED = 70  # EX_SOFTWARE, as the faust coordinator exits when a step fails
# The service could not start (port taken, data dir locked, a dependency unreachable):
# the one-line reason is on stderr.
EXIT_STARTUP_FAILED = 1

log = logging.getLogger(__name__)


async def serve_dev(
    settings: Settings, log_level: str, demo: DemoRun | None, *, exit_after: bool
) -> int:
    """Serve until stopped; with `demo`, run it once listening (and stop after, if asked)."""
    try:
        token = await _admin_token(settings)  # None when AOB_AUTH=off
        server, serving = await _listening(settings, "dev", log_level)
    except StartupFailed as failure:
        print(failure, file=sys.stderr, flush=True)
        return EXIT_STARTUP_FAILED
    if server is None:
        return EXIT_STARTUP_FAILED
    base_url = _base_url(server, settings.host)
    print(f"aob dev server listening on {base_url}  (data in {settings.data_dir.resolve()})")
    print(f"  API docs: {base_url}/docs    health: {base_url}/health", flush=True)
    print(f"  web console: {_console_url(base_url, token)}", flush=True)
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
    if status == "refused":
        return 2  # the workflow or its inputs are invalid input, not a failed run
    return 0 if status == "completed" else 1


async def serve_service(settings: Settings, role: str, log_level: str) -> int:
    """Serve one cluster service (see `aob.platform.engine`) until stopped."""
    check_role(settings, role)  # the command line checked it: this is for other callers
    try:
        server, serving = await _listening(settings, role, log_level)
    except StartupFailed as failure:
        print(failure, file=sys.stderr, flush=True)
        return EXIT_STARTUP_FAILED
    if server is None:
        return EXIT_STARTUP_FAILED
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
    """The server, once it listens (None if it stopped first), and its serving task;
    `StartupFailed` says in one line why it could not start."""
    listener = _bind(settings.host, settings.port)
    app = create_app(settings, role)
    failure = _record_startup_failure(app)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        # JSON log lines: uvicorn's records go to the root logger's JSON handler.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )
    server = _Server(config)
    with _HeldLogs():
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:
            if serving.done():
                if failure.error is not None:
                    raise StartupFailed(startup_problem(failure.error, settings, role))
                return None, serving  # uvicorn has logged why
            await asyncio.sleep(0.02)
    tune_garbage_collection()
    engine = _engine(server)
    if engine is not None:
        watch = asyncio.create_task(_exit_when_a_host_dies(server, engine))
        serving.add_done_callback(lambda _: watch.cancel())
    return server, serving


# Net allocations of tracked objects between young-generation passes (CPython's
# default: 700). A server's requests allocate thousands each turn, nearly all freed by
# reference counting; at 700 the collector ran ~90 passes per 1,000 submissions.
GC_YOUNG_THRESHOLD: Final = 10_000


def tune_garbage_collection() -> None:
    """Keep what start-up built (modules, classes, schemas, the engine: ~170k objects
    that live as long as the process) out of the garbage collector's full passes, and
    run its young passes less often (issue 15). Each full pass walked start-up's
    objects again: under load a pass cost 100-160 ms of CPU and stalled every request
    that long. Garbage made later is collected as before; start-up's own first."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


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


def _console_url(base_url: str, token: str | None) -> str:
    """The console's URL; on a dev server with authentication, one that logs in as the
    local admin when opened. The token rides in the fragment, which browsers never send
    to a server nor in a Referer; the console moves it to sessionStorage and drops it
    from the address bar."""
    return f"{base_url}/#token={token}" if token else f"{base_url}/"


def _base_url(server: uvicorn.Server, host: str) -> str:
    port = server.servers[0].sockets[0].getsockname()[1] if server.servers else 0
    return f"http://{host}:{port}"


# --- start-up failures, in one line each ----------------------------------------------


class StartupFailed(Exception):
    """Why the service cannot start, as the one line to print."""


class _Server(uvicorn.Server):
    """uvicorn's server, except that a failed start-up ends `serve()` instead of raising
    SystemExit through the event loop (which would end the process with a traceback)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        except SystemExit:
            self.should_exit = True


class _StartupFailure:
    """Why the app's lifespan failed to start, if it did."""

    error: BaseException | None = None


class _HeldLogs(logging.Filter):
    """Holds the records of the libraries that start the service (uvicorn's multi-line
    report of a failed start-up, the Kafka client's connection errors) until the start
    is decided: replayed once it succeeded, dropped when `startup_problem` says why it
    failed in one line (unless debugging)."""

    LOGGERS = ("uvicorn.error", "aiokafka")

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def __enter__(self) -> _HeldLogs:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)
        if kind is None or log.isEnabledFor(logging.DEBUG):
            for record in self.held:
                logging.getLogger(record.name).handle(record)

    def filter(self, record: logging.LogRecord) -> bool:
        self.held.append(record)
        return False


def _record_startup_failure(app: FastAPI) -> _StartupFailure:
    failure = _StartupFailure()
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        started = False
        try:
            async with inner(app) as state:
                started = True
                yield state
        except Exception as error:
            if not started:
                log.debug("start-up failed", exc_info=error)
                failure.error = error
            raise

    app.router.lifespan_context = lifespan
    return failure


async def _admin_token(settings: Settings) -> str | None:
    try:
        return await local_admin_token(settings)
    except Exception as error:  # its store is the read models' database
        log.debug("start-up failed", exc_info=error)
        raise StartupFailed(startup_problem(error, settings, "dev")) from None


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts: a taken port is
    reported at once, and no engine opens (and locks the data dir) for nothing."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        reason = error.strerror
        raise StartupFailed(f"aob: cannot listen on {host}: {reason}; pass --host ADDR") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise StartupFailed(f"aob: port {port} in use; pass --port N") from None
        if error.errno == errno.EACCES:
            raise StartupFailed(
                f"aob: not allowed to listen on port {port}; pass --port N (above 1023)"
            ) from None
        reason = error.strerror or str(error)
        raise StartupFailed(
            f"aob: cannot listen on {host}:{port}: {reason}; pass --host ADDR"
        ) from None
    return sock


def startup_problem(error: BaseException, settings: Settings, role: str) -> str:
    """One line saying why the service did not start, and what to change."""
    reason = _first_line(error)
    if isinstance(error, LogError) and isinstance(error.__cause__, BlockingIOError):
        data_dir = settings.data_dir.resolve()
        holder = _lock_holder(settings.data_dir / "log.db.lock")
        by = f" (pid {holder})" if holder is not None else ""
        return (
            f"aob: data dir {data_dir} is in use by another aob server{by}; stop it, "
            "or pass --data-dir DIR"
        )
    if isinstance(error, LogError) and settings.kafka_bootstrap:
        return f"aob: {reason}; check AOB_KAFKA_BOOTSTRAP"
    if settings.database_url and _raised_in(error, "asyncpg"):
        where = _without_credentials(settings.database_url.get_secret_value())
        return f"aob: cannot use PostgreSQL at {where}: {reason}; check AOB_DATABASE_URL"
    if isinstance(error, ConfigError | LogError):
        return f"aob: {reason}"
    return f"aob {role}: start-up failed: {reason} (--log-level debug shows the traceback)"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(error).__name__}: {line}" if not isinstance(error, LogError) else line


def _raised_in(error: BaseException, package: str) -> bool:
    """Whether `error` (or what caused it) was raised inside `package`."""
    seen: BaseException | None = error
    while seen is not None:
        if type(seen).__module__.startswith(package):
            return True
        frames = traceback.extract_tb(seen.__traceback__)
        if any(f"{os.sep}{package}{os.sep}" in frame.filename for frame in frames):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path}"


def _lock_holder(lock_file: Path) -> int | None:
    """The pid holding a flock on `lock_file`, from /proc/locks (Linux), if it says."""
    try:
        stat = os.stat(lock_file)
        with open("/proc/locks", encoding="ascii") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF" (blocked waiters have "->")
        if "->" not in fields and len(fields) >= 6 and fields[5] == device:
            pid = int(fields[4]) if fields[4].isdigit() else 0
            return pid if pid > 0 else None
    return None


# --- audit -------------------------------------------------------------------------------


async def run_audit(settings: Settings, args: argparse.Namespace) -> int:
    """`aob server audit history RUN` and `aob server audit verify`."""
    where = f"aob server audit {args.action}"
    if settings.kafka_bootstrap is None and not (settings.data_dir / "log.db").exists():
        print(f"{where}: no embedded log in {settings.data_dir.resolve()}", file=sys.stderr)
        return 2
    try:
        with _HeldLogs():
            event_log = await open_log(settings, "audit")
    except LogError as error:
        print(f"{where}: cannot open the log: {error}", file=sys.stderr)
        return 2
    try:
        if args.action == "history":
            return await _history(event_log, args.run_id, as_json=args.json)
        return await _verify(settings, event_log, keep=args.keep)
    except StartupFailed as failure:
        print(failure, file=sys.stderr)
        return 2
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
    try:
        live = await open_read_models(settings)
    except Exception as error:  # the database is not there: say so in one line
        log.debug("cannot open the read models", exc_info=error)
        raise StartupFailed(startup_problem(error, settings, "audit")) from None
    try:
        async with fresh_read_models(settings, keep=keep) as (fresh, where):
            outcome = await verify(event_log, live, fresh, inline_work(settings))
            if keep:
                print(f"rebuilt read models kept in {where}")
    finally:
        await live.close()
    print(outcome.summary())
    return 0 if outcome.equal else 1
