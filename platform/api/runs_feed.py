"""The runs of the caller's tenant as they change, as Server-Sent Events: what keeps a
list of runs (the console's runs page) live without polling.

`GET /api/v1/streams/runs` sends `ready` first, then a `run` event (the run's list row:
id, workflow, status, times, error; never inputs or outputs) each time an event changes
a run of the tenant, once the read models show the change. Ids are `epoch:seq`; a
client that comes back with its last id (`Last-Event-ID`, as EventSource sends it, or
`last_event_id`) gets the changes it missed while the server still holds them (the
last ~2,000), and otherwise `ready` with `"resync": true`: reload the list, then apply
what follows. A new stream always starts with `resync: true`. See
`aob.platform.fanout.RunChangeFeed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from aob.platform.api.deps import PrincipalDep
from aob.platform.api.stream import CORS_HEADERS, PREFLIGHT_HEADERS, RETRY_MS, get_hub
from aob.platform.auth.http import require
from aob.platform.auth.principal import Permission
from aob.platform.fanout import FeedItem

router = APIRouter(prefix="/api/v1/streams", tags=["stream"])

FeedId = Annotated[
    str | None,
    Query(max_length=64, description="resume after this id (the Last-Event-ID header wins)"),
]
HeartbeatSeconds = Annotated[float, Query(ge=0.05, le=300, description="heartbeat interval, s")]


@router.get(
    "/runs",
    summary="The tenant's runs as they change, as Server-Sent Events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    dependencies=[require(Permission.READ)],
)
async def stream_runs(
    request: Request,
    principal: PrincipalDep,
    last_event_id: FeedId = None,
    heartbeat: HeartbeatSeconds = 15.0,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    after = (last_event_id_header or "").strip()[:64] or last_event_id
    feed = get_hub(request).run_changes
    items = feed.stream(principal.tenant, after=after, heartbeat=heartbeat)
    return EventSourceResponse(_sse_body(items), ping=0, headers=CORS_HEADERS)


@router.options("/runs", include_in_schema=False)
async def stream_runs_preflight() -> Response:
    return Response(status_code=204, headers=PREFLIGHT_HEADERS)


async def _sse_body(batches: AsyncGenerator[list[FeedItem], None]) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(batches):
        yield f"retry: {RETRY_MS}\r\n\r\n".encode()
        async for batch in batches:
            yield b"".join(item.sse for item in batch)
