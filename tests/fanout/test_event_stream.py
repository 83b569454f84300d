"""The run stream's SSE response over the real hub, driven as an ASGI server drives it:
a client that goes away ends its subscription; HEAD opens none."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from aob.platform.api.event_stream import EventStreamResponse
from aob.platform.engine import Engine
from aob.platform.fanout import FanoutHub
from aob.platform.settings import Settings
from tests.fanout.live import HELD, submitted, until


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[FanoutHub, str]]:
    """A running hub, and a run that rests on a node no worker runs."""
    engine = await Engine.open(Settings(data_dir=tmp_path, node_types=["ext"]))
    await engine.start()
    hub = FanoutHub(engine.log, engine.read_models)
    await hub.start()
    yield hub, await submitted(engine, HELD)
    await hub.stop()
    await engine.stop()


class Connection:
    """One HTTP exchange as the ASGI server sees it: what was sent, and a client that
    leaves when told to."""

    def __init__(self) -> None:
        self.sent: list[MutableMapping[str, Any]] = []
        self.leave = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


def response(hub: FanoutHub, run_id: str) -> EventStreamResponse:
    opened = partial(hub.stream, run_id, after=None, heartbeat=0.05)
    return EventStreamResponse(opened, retry_ms=1000, headers={"X-Test": "1"})


async def test_a_client_that_leaves_ends_its_subscription(hub: tuple[FanoutHub, str]) -> None:
    fanout, run_id = hub
    client = Connection()
    scope = {"type": "http", "method": "GET"}
    serving = asyncio.create_task(response(fanout, run_id)(scope, client.receive, client.send))
    await until(partial(_has, client, b": heartbeat"), "a heartbeat")
    assert fanout.subscribers == 1

    client.leave.set()
    await asyncio.wait_for(serving, 30)  # returns: the stream is over, not cancelled

    assert fanout.subscribers == 0
    start = client.sent[0]
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"x-test"] == b"1"
    assert b"content-length" not in headers
    assert client.body().startswith(b"retry: 1000\r\n\r\n")


async def test_head_sends_the_headers_and_subscribes_to_nothing(
    hub: tuple[FanoutHub, str],
) -> None:
    fanout, run_id = hub
    client = Connection()
    await response(fanout, run_id)({"type": "http", "method": "HEAD"}, client.receive, client.send)
    assert client.sent[0]["status"] == 200
    assert client.sent[1:] == [{"type": "http.response.body", "body": b"", "more_body": False}]
    assert fanout.subscribers == 0


async def _has(client: Connection, text: bytes) -> bool:
    return text in client.body()
