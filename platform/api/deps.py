"""Request-scoped dependencies, as `Annotated` aliases routes can declare."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request

from aob.platform.commands import Commands
from aob.platform.engine import Engine


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_commands(request: Request) -> Commands:
    commands: Commands = request.app.state.commands
    return commands


def get_trace_id(request: Request) -> str:
    """The caller's trace id (W3C traceparent or X-Trace-Id), else a new one."""
    traceparent = request.headers.get("traceparent", "")
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return parts[1]
    return request.headers.get("x-trace-id") or uuid.uuid4().hex


def get_actor(request: Request) -> str:
    # Authentication arrives with its own issue; until then the caller names itself.
    return request.headers.get("x-aob-actor", "anonymous")[:128]


EngineDep = Annotated[Engine, Depends(get_engine)]
CommandsDep = Annotated[Commands, Depends(get_commands)]
TraceId = Annotated[str, Depends(get_trace_id)]
Actor = Annotated[str, Depends(get_actor)]
