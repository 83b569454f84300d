"""Reading SSE streams in tests, with httpx (not the CLI's own parser)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Frame:
    event: str
    data: Any
    id: int | None


@dataclass
class Stream:
    frames: list[Frame] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    headers: httpx.Headers | None = None
    closed_by_server: bool = False

    @property
    def events(self) -> list[Frame]:
        """Run events only (not end/reconnect)."""
        return [f for f in self.frames if f.id is not None]

    @property
    def ids(self) -> list[int]:
        return [f.id for f in self.events if f.id is not None]

    @property
    def end(self) -> dict[str, Any] | None:
        ends = [f.data for f in self.frames if f.event == "end"]
        return ends[-1] if ends else None


async def read(
    client: httpx.AsyncClient,
    run_id: str,
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    max_events: int | None = None,
    on_read: Callable[[Stream], Awaitable[None]] | None = None,
) -> Stream:
    """Read a run's stream until the server closes it (or `max_events` run events).

    `on_read(stream)` is awaited after each comment and each frame: a test acts there
    on what the stream has shown so far (e.g. cancel the run after a heartbeat).
    """
    out = Stream()
    url = f"/api/v1/runs/{run_id}/stream"
    async with client.stream("GET", url, params=params, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        out.headers = response.headers
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line.startswith(":"):
                out.comments.append(line[1:].strip())
                if on_read is not None:
                    await on_read(out)
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "retry" in fields:
                out.retry = int(fields.pop("retry"))
            if "data" in fields:
                ident = int(fields["id"]) if "id" in fields else None
                out.frames.append(
                    Frame(fields.get("event", "message"), json.loads(fields["data"]), ident)
                )
                if max_events is not None and len(out.events) >= max_events:
                    return out
                if on_read is not None:
                    await on_read(out)
            fields = {}
        out.closed_by_server = True
    return out
