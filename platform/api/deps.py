"""Request-scoped dependencies, as `Annotated` aliases routes can declare.

They are coroutines although they never wait: FastAPI runs a plain `def` dependency in
a worker thread, a thread hop per dependency per request (about a tenth of a submit's
CPU, measured with bench/http_submit.py)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request

from aob.platform.auth.http import principal_of
from aob.platform.auth.principal import Principal
from aob.platform.commands import Commands
from aob.platform.engine import Engine


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_commands(request: Request) -> Commands:
    return commands_of(request)


def commands_of(request: Request) -> Commands:
    commands: Commands = request.app.state.commands
    return commands


async def get_trace_id(request: Request) -> str:
    """The caller's trace id (W3C traceparent or X-Trace-Id), else a new one."""
    return request_trace_id(request)


def request_trace_id(request: Request) -> str:
    """`get_trace_id` for a route that resolves it itself (see `submit_run`)."""
    given = request.scope.get("state", {}).get("trace_id")  # HttpObservation's choice
    if isinstance(given, str):
        return given
    traceparent = request.headers.get("traceparent", "")
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return parts[1]
    return request.headers.get("x-trace-id") or uuid.uuid4().hex


async def get_principal(request: Request) -> Principal:
    """The authenticated caller (aob.platform.auth): name, roles, tenant."""
    return principal_of(request)


async def get_actor(request: Request) -> str:
    """The authenticated caller's name, recorded as the actor of what it does."""
    return principal_of(request).name


EngineDep = Annotated[Engine, Depends(get_engine)]
CommandsDep = Annotated[Commands, Depends(get_commands)]
TraceId = Annotated[str, Depends(get_trace_id)]
Actor = Annotated[str, Depends(get_actor)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
