"""Live run events over WebSocket against a real dev server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.fanout.live import HELD, QUICK, SLOW, LiveServer


def ws_url(server: LiveServer, run_id: str, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + f"/api/v1/runs/{run_id}/ws{query}"


async def receive_all(ws: ClientConnection, limit: int | None = None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    try:
        async for raw in ws:
            messages.append(json.loads(raw))
            if limit is not None and len(messages) >= limit:
                break
    except ConnectionClosed:
        pass
    return messages


async def test_history_then_end_then_a_clean_close(server: LiveServer) -> None:
    run_id = server.submit(QUICK, {"x": 1})
    server.wait_finished(run_id)
    expected = [e["offset"] for e in server.events(run_id)]

    async with connect(ws_url(server, run_id, "?from=start")) as ws:
        messages = await receive_all(ws)
        await ws.wait_closed()
    assert [m["id"] for m in messages[:-1]] == expected
    assert messages[0]["event"] == "workflow_started"
    assert messages[-1] == {
        "event": "end",
        "run_id": run_id,
        "status": "completed",
        "last_event_id": expected[-1],
    }
    assert ws.close_code == 1000


async def test_resume_after_a_dropped_socket(server: LiveServer) -> None:
    run_id = server.submit(SLOW)
    seen: list[int] = []
    last = -1
    while True:
        async with connect(ws_url(server, run_id, f"?last_event_id={last}")) as ws:
            batch = await receive_all(ws, limit=4)
        events = [m for m in batch if "id" in m]
        seen += [m["id"] for m in events]
        if any(m["event"] == "end" for m in batch):
            break
        last = events[-1]["id"]
    server.wait_finished(run_id)
    assert seen == [e["offset"] for e in server.events(run_id)]


async def test_live_events_filters_and_heartbeats(server: LiveServer) -> None:
    run_id = server.submit(HELD)
    async with connect(ws_url(server, run_id, "?heartbeat=0.1&node=wait&from=start")) as ws:
        first = json.loads(await ws.recv())
        beats = [json.loads(await ws.recv()) for _ in range(2)]  # the run is idle meanwhile
        await asyncio.to_thread(server.cancel, run_id)
        rest = beats + await receive_all(ws)
    assert first["event"] == "node_scheduled"
    assert first["node_id"] == "wait"
    kinds = [m["event"] for m in rest]
    assert kinds.count("heartbeat") >= 2
    assert kinds[-2:] == ["workflow_cancelled", "end"]


async def test_unknown_run_is_an_error_message_then_close(server: LiveServer) -> None:
    async with connect(ws_url(server, "run_nope")) as ws:
        message = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert message["event"] == "error"
    assert message["status"] == 404
    assert ws.close_code == 4404
