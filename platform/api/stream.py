"""Live run events: Server-Sent Events and WebSocket, both fed by the fanout hub.

Each event's id is its position in the run's log partition. A client resumes with
`Last-Event-ID` (header, as EventSource sends it, or `last_event_id` query
parameter) and gets exactly the events after it; `from=start` asks for the run's
history first; by default a stream starts at the present. A stream ends after the
run's outcome with an `end` event; `reconnect` means "come back with your last id".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, WebSocket
from fastapi.responses import Response
from sse_starlette import EventSourceResponse
from starlette.websockets import WebSocketDisconnect

from aob.platform.api.bounds import INT64_MAX
from aob.platform.api.deps import CommandsDep
from aob.platform.api.event_stream import EventStreamResponse, watch_shutdown
from aob.platform.auth.http import require
from aob.platform.auth.principal import Permission
from aob.platform.commands import Commands
from aob.platform.deltas import open_live_stream, sse_body
from aob.platform.fanout import (
    Batch,
    FanoutHub,
    RunEvent,
    StreamBroken,
    StreamEnd,
    StreamFilter,
)
from aob.platform.problems import Problem

router = APIRouter(prefix="/api/v1/runs", tags=["stream"])

# Streams are read-only and authenticate by bearer token, never by cookie: any
# origin may read them from a browser.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Content-Type",
}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, OPTIONS",
    "Access-Control-Allow-Headers": "Last-Event-ID, Authorization, Cache-Control, X-Aob-Actor",
    "Access-Control-Max-Age": "600",
}
RETRY_MS = 1000  # how soon an EventSource reconnects after a dropped stream

From = Annotated[
    Literal["start", "now"],
    Query(alias="from", description="'start': the run's history first; 'now': new events only"),
]
LastEventId = Annotated[
    int | None,
    Query(
        ge=-1,
        le=INT64_MAX,
        description="resume after this event id (the Last-Event-ID header wins)",
    ),
]
Nodes = Annotated[list[str] | None, Query(description="only events of these nodes (repeatable)")]
Only = Annotated[Literal["errors"] | None, Query(description="'errors': failures only")]
HeartbeatSeconds = Annotated[float, Query(ge=0.05, le=300, description="heartbeat interval, s")]
# Live LLM output (docs/streaming.md): agents' token deltas too, ids become cursors.
Deltas = Annotated[bool, Query(description="also running agents' output (llm_delta events)")]
CursorParam = Annotated[
    str | None,
    Query(max_length=100, description="deltas=true: resume after this cursor (header wins)"),
]


def get_hub(request: Request) -> FanoutHub:
    hub: FanoutHub = request.app.state.fanout
    return hub


def _resume_point(start: str, query_id: int | None, header_id: str | None) -> int | None:
    """The offset to stream after: -1 for the whole history, None for "from now"."""
    if header_id is not None and header_id.strip():
        try:
            resume = int(header_id)
            if resume > INT64_MAX:
                raise ValueError("past the largest event id")
            return max(resume, -1)
        except ValueError:
            raise Problem(
                400,
                "bad-request",
                "Bad Last-Event-ID",
                f"Last-Event-ID must be an event id (an integer), got {header_id!r}",
            ) from None
    if query_id is not None:
        return query_id
    return -1 if start == "start" else None


def _filter(node: list[str] | None, only: str | None) -> StreamFilter:
    return StreamFilter(frozenset(node or ()), errors_only=only == "errors")


@router.get(
    "/{run_id}/stream",
    summary="A run's events as Server-Sent Events",
    response_class=EventStreamResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    dependencies=[require(Permission.READ)],
)
async def stream_run(
    run_id: str,
    request: Request,
    commands: CommandsDep,
    start: From = "now",
    last_event_id: LastEventId = None,
    node: Nodes = None,
    filter: Only = None,
    heartbeat: HeartbeatSeconds = 15.0,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    deltas: Deltas = False,
    cursor: CursorParam = None,
) -> Response:
    if deltas:  # the run's events and its agents' live output: aob.platform.deltas
        await commands.run(run_id)
        live = await open_live_stream(
            request.app.state,
            run_id,
            from_start=start == "start",
            cursor=last_event_id_header or cursor,
            last_event_id=last_event_id,
            filter=_filter(node, filter),
            heartbeat=heartbeat,
        )
        return EventSourceResponse(sse_body(live, RETRY_MS), ping=0, headers=CORS_HEADERS)
    after = _resume_point(start, last_event_id, last_event_id_header)
    await commands.run(run_id)  # 404 for an unknown run, before the stream starts
    hub = get_hub(request)
    watch_shutdown(hub)
    wanted = _filter(node, filter)
    return EventStreamResponse(
        partial(hub.stream, run_id, after=after, filter=wanted, heartbeat=heartbeat),
        retry_ms=RETRY_MS,
        headers=CORS_HEADERS,
    )


@router.options("/{run_id}/stream", include_in_schema=False)
async def stream_preflight(run_id: str) -> Response:
    return Response(status_code=204, headers=PREFLIGHT_HEADERS)


@router.websocket("/{run_id}/ws", dependencies=[require(Permission.READ)])
async def websocket_run(
    websocket: WebSocket,
    run_id: str,
    start: From = "now",
    last_event_id: LastEventId = None,
    node: Nodes = None,
    filter: Only = None,
    heartbeat: HeartbeatSeconds = 15.0,
    deltas: Deltas = False,
    cursor: CursorParam = None,
) -> None:
    """JSON text messages, one per event (the SSE `data` plus `event`), then `end`.

    The server closes with 1000 after `end`, 1013 after `reconnect`, and 4404 (after
    an `error` message) for an unknown run.
    """
    await websocket.accept()
    commands: Commands = websocket.app.state.commands
    try:
        await commands.run(run_id)
        live = None
        if deltas:  # the run's events and its agents' live output: aob.platform.deltas
            live = await open_live_stream(
                websocket.app.state,
                run_id,
                from_start=start == "start",
                cursor=cursor,
                last_event_id=last_event_id,
                filter=_filter(node, filter),
                heartbeat=heartbeat,
            )
    except Problem as problem:
        await websocket.send_json({"event": "error", **problem.body()})
        await websocket.close(code=4000 + problem.status)
        return
    hub: FanoutHub = websocket.app.state.fanout
    after = last_event_id if last_event_id is not None else (-1 if start == "start" else None)
    items: Any = live or hub.stream(
        run_id, after=after, filter=_filter(node, filter), heartbeat=heartbeat
    )
    pump = asyncio.create_task(_ws_pump(websocket, items))
    watch = asyncio.create_task(_until_disconnect(websocket))
    done, pending = await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if pump in done and not pump.cancelled() and pump.exception() is None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.close(code=pump.result())


async def _ws_pump(websocket: WebSocket, batches: AsyncGenerator[Batch, None]) -> int:
    """Send every item, one message each; returns the close code."""
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for item in batch:
                if isinstance(item, RunEvent):
                    await websocket.send_text(item.json)
                    continue
                await websocket.send_json(item.message)
                if isinstance(item, StreamEnd):
                    return 1000
                if isinstance(item, StreamBroken):
                    return 1013
    return 1000


async def _until_disconnect(websocket: WebSocket) -> None:
    """Clients send nothing we need; wait until they go away."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
