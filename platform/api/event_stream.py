"""A lean Server-Sent Events response for a run's event stream.

sse-starlette's `EventSourceResponse` runs a task group per stream (the body, a
disconnect listener, a shutdown listener) and wraps every write in a cancel scope.
With a thousand subscribers of one run those per-write costs, and a task switch per
subscriber and round, were most of the fanout's time. This response:

- writes what the hub's stream yields (history, filtered or queued batches) from the
  request's own task;
- hands the hub a `direct` writer, so that live batches go to the socket from the
  hub's dispatch itself (`FanoutHub.stream(direct=...)`);
- watches for the client going away in one small task per stream (`receive()`),
  which ends the stream (and so its subscription) at once;
- ends every open stream with a `reconnect` notice when the server shuts down: one
  watcher per hub, on sse-starlette's shutdown signal (uvicorn waits for open
  responses before it stops the app).

Everything else is what `EventSourceResponse` sent: the same headers, a HEAD request
gets them with no body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

from sse_starlette import EventSourceResponse
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from aob.platform.fanout import Batch, DirectWrite, FanoutHub

log = logging.getLogger(__name__)

# What EventSourceResponse sends with every stream (proxies must not buffer it).
STREAM_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


class OpenStream(Protocol):
    """Opens the stream's batches (`FanoutHub.stream`, its other arguments bound)."""

    def __call__(self, *, direct: DirectWrite) -> AsyncGenerator[Batch, None]: ...


class EventStreamResponse(Response):
    """`text/event-stream` of `open_stream(direct)`: a `retry:` hint first, then each
    yielded batch's frames in one write; `direct` writes a body chunk."""

    media_type = "text/event-stream"

    def __init__(
        self,
        open_stream: OpenStream,
        *,
        retry_ms: int,
        headers: Mapping[str, str],
        status_code: int = 200,  # (OpenAPI reads the default status here)
    ) -> None:
        super().__init__(status_code=status_code, headers={**STREAM_HEADERS, **headers})
        self.open_stream = open_stream
        self.retry = f"retry: {retry_ms}\r\n\r\n".encode()

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        super().init_headers(headers)
        # No content-length: the body is open-ended (Response sets one for b"").
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        body = _Body(send)
        stream = asyncio.current_task()
        assert stream is not None
        watch = asyncio.ensure_future(_until_disconnected(receive, stream, body))
        try:
            await body.write(self.retry)
            async with contextlib.aclosing(self.open_stream(direct=body.write)) as batches:
                async for batch in batches:
                    await body.write(batch.sse)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not body.disconnected:
                raise
            stream.uncancel()  # the client left: the stream is over, not cancelled
        finally:
            body.done = True
            watch.cancel()


class _Body:
    """Body writes of one stream, and what its disconnect watcher needs to know."""

    __slots__ = ("disconnected", "done", "send")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.disconnected = False
        self.done = False

    async def write(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})


async def _until_disconnected(receive: Receive, stream: asyncio.Task[Any], body: _Body) -> None:
    """Cancel the stream's task when its client goes away (ends its subscription)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    if not body.done:
        body.disconnected = True
        stream.cancel()


_shutdown_watches: weakref.WeakKeyDictionary[FanoutHub, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


def watch_shutdown(hub: FanoutHub) -> None:
    """Once per hub: when the server begins to shut down, end the hub's streams (each
    sends `reconnect` with reason "shutdown"), so that uvicorn, which waits for open
    responses, can stop."""
    if hub not in _shutdown_watches:
        _shutdown_watches[hub] = asyncio.create_task(_close_on_shutdown(hub))


async def _close_on_shutdown(hub: FanoutHub) -> None:
    # The signal sse-starlette's own streams end on (uvicorn's should_exit), shared.
    await EventSourceResponse._listen_for_exit_signal()
    log.info("server shutting down: ending %d run streams", hub.subscribers)
    hub.close_streams()
