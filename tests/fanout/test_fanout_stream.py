"""Live run events over SSE against a real dev server: history, resume, filters, many clients."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tests.fanout import sse
from tests.fanout.live import FAILING, HELD, QUICK, SLOW, LiveServer

TERMINAL = {"workflow_completed", "workflow_failed", "workflow_cancelled"}


def cancel_once(
    server: LiveServer, run_id: str, beats: int = 1
) -> Callable[[sse.Stream], Awaitable[None]]:
    """An `on_read` hook: cancels the run once the stream has shown `beats` heartbeats."""
    sent = False

    async def hook(stream: sse.Stream) -> None:
        nonlocal sent
        if not sent and stream.comments.count("heartbeat") >= beats:
            sent = True
            await asyncio.to_thread(server.cancel, run_id)

    return hook


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0, trust_env=False) as c:
        yield c


async def test_history_from_start_is_the_whole_timeline_then_the_stream_ends(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    run_id = server.submit(QUICK, {"x": 1})
    server.wait_finished(run_id)
    timeline = server.events(run_id)

    stream = await sse.read(client, run_id, params={"from": "start"})

    assert stream.closed_by_server
    assert stream.ids == [e["offset"] for e in timeline]
    assert [f.data["type"] for f in stream.events] == [e["type"] for e in timeline]
    names = [f.event for f in stream.events]
    assert names[0] == "workflow_started"
    assert names.count("node_completed") == 2
    assert names[-1] == "workflow_completed"
    first = stream.events[0].data
    assert first["id"] == stream.ids[0]
    assert first["run_id"] == run_id
    assert first["event_id"] == timeline[0]["event_id"]
    assert stream.events[-1].data["data"]["output"] == 4
    assert stream.end == {
        "event": "end",
        "run_id": run_id,
        "status": "completed",
        "last_event_id": stream.ids[-1],
    }
    assert stream.retry == 1000


async def test_last_event_id_resumes_exactly_after_it(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    run_id = server.submit(QUICK, {"x": 1})
    server.wait_finished(run_id)
    ids = [e["offset"] for e in server.events(run_id)]

    for k, last in enumerate(ids):
        resumed = await sse.read(client, run_id, headers={"Last-Event-ID": str(last)})
        assert resumed.ids == ids[k + 1 :]
        assert resumed.end is not None
        assert resumed.end["status"] == "completed"
    by_query = await sse.read(client, run_id, params={"last_event_id": ids[2]})
    assert by_query.ids == ids[3:]
    # The header wins over the query, as EventSource reuses the first URL on reconnect.
    both = await sse.read(
        client, run_id, params={"last_event_id": ids[0]}, headers={"Last-Event-ID": str(ids[3])}
    )
    assert both.ids == ids[4:]


async def test_a_live_stream_cut_and_resumed_has_no_gap_and_no_duplicate(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    run_id = server.submit(SLOW)
    seen: list[int] = []
    last = -1
    # Drop the connection after every few events while the run is producing them.
    while True:
        part = await sse.read(client, run_id, headers={"Last-Event-ID": str(last)}, max_events=3)
        seen += part.ids
        if part.end is not None:
            break
        last = part.ids[-1]
    server.wait_finished(run_id)
    timeline = server.events(run_id)
    assert seen == [e["offset"] for e in timeline]
    assert len(seen) == len(set(seen)) > 20


async def test_by_default_a_stream_starts_now(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    finished = server.submit(QUICK, {"x": 1})
    server.wait_finished(finished)
    at_once = await sse.read(client, finished)
    assert at_once.events == []
    assert at_once.end is not None
    assert at_once.end["status"] == "completed"

    held = server.submit(HELD)
    # The run rests on its scheduled node (no worker runs `ext`) until it is cancelled.
    before = {e["offset"] for e in server.wait_event(held, "NodeScheduled")}
    # A heartbeat comes only from a subscribed stream: then "now" has been fixed.
    stream = await sse.read(
        client, held, params={"heartbeat": 0.05}, on_read=cancel_once(server, held)
    )
    assert [f.event for f in stream.events] == ["cancel_requested", "workflow_cancelled"]
    assert not before & set(stream.ids)
    assert stream.end is not None
    assert stream.end["status"] == "cancelled"


async def test_filters_by_node_and_errors(server: LiveServer, client: httpx.AsyncClient) -> None:
    run_id = server.submit(FAILING)
    server.wait_finished(run_id)

    ok_only = await sse.read(client, run_id, params={"from": "start", "node": "ok"})
    assert {f.data["node_id"] for f in ok_only.events[:-1]} == {"ok"}
    assert ok_only.events[-1].event == "workflow_failed"  # the outcome always passes

    errors = await sse.read(client, run_id, params={"from": "start", "filter": "errors"})
    assert [f.event for f in errors.events] == ["node_failed", "workflow_failed"]
    assert "boom" in errors.events[0].data["data"]["error"]
    assert errors.end is not None
    assert errors.end["status"] == "failed"

    both = await sse.read(
        client, run_id, params={"from": "start", "filter": "errors", "node": ["ok", "x"]}
    )
    assert [f.event for f in both.events] == ["workflow_failed"]


async def test_many_clients_of_one_run_get_the_same_events(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    run_id = server.submit(SLOW)
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(
        base_url=server.url, timeout=30.0, limits=limits, trust_env=False
    ) as many:
        streams = await asyncio.gather(
            *(sse.read(many, run_id, params={"from": "start"}) for _ in range(40))
        )
    server.wait_finished(run_id)
    expected = [e["offset"] for e in server.events(run_id)]
    for stream in streams:
        assert stream.ids == expected
        assert stream.end is not None
        assert stream.end["status"] == "failed"


async def test_heartbeats_keep_an_idle_stream_alive(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    run_id = server.submit(HELD)

    stream = await sse.read(
        client, run_id, params={"heartbeat": 0.1}, on_read=cancel_once(server, run_id, beats=3)
    )
    assert stream.comments.count("heartbeat") >= 3
    assert stream.end is not None
    assert stream.end["status"] == "cancelled"


async def test_browsers_may_read_streams_from_any_origin(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    run_id = server.submit(QUICK, {"x": 1})
    server.wait_finished(run_id)
    stream = await sse.read(client, run_id, headers={"Origin": "https://ui.example"})
    assert stream.headers is not None
    assert stream.headers["access-control-allow-origin"] == "*"
    assert stream.headers["cache-control"] == "no-store"

    preflight = await client.options(
        f"/api/v1/runs/{run_id}/stream",
        headers={
            "Origin": "https://ui.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "Last-Event-ID" in preflight.headers["access-control-allow-headers"]


async def test_bad_requests_get_problems(server: LiveServer, client: httpx.AsyncClient) -> None:
    unknown = await client.get("/api/v1/runs/run_nope/stream")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert unknown.json()["detail"] == "no run 'run_nope'"

    run_id = server.submit(QUICK, {"x": 1})
    bad_id = await client.get(f"/api/v1/runs/{run_id}/stream", headers={"Last-Event-ID": "x"})
    assert bad_id.status_code == 400
    assert "Last-Event-ID" in bad_id.json()["detail"]
    bad_filter = await client.get(f"/api/v1/runs/{run_id}/stream", params={"filter": "all"})
    assert bad_filter.status_code == 422


async def test_terminal_events_are_named_as_the_seed_names_them(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    run_id = server.submit(FAILING)
    server.wait_finished(run_id)
    stream = await sse.read(client, run_id, params={"from": "start"})
    names = [f.event for f in stream.events]
    assert {
        "workflow_started",
        "node_scheduled",
        "node_completed",
        "node_failed",
        "workflow_failed",
    } <= set(names)
    assert set(names) & TERMINAL == {"workflow_failed"}
    assert all(f.data["event"] == f.event for f in stream.events)


async def test_a_server_that_stops_ends_its_streams_with_a_reconnect_notice(
    own_server: LiveServer,
) -> None:
    run_id = own_server.submit(HELD)
    process = own_server.process
    assert process is not None
    exit_code: list[int] = []

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        exit_code.append(process.wait(timeout=30))  # an open stream must not hold it up

    async def stop_once(stream: sse.Stream) -> None:
        if not exit_code and stream.comments.count("heartbeat") >= 1:
            await asyncio.to_thread(stop)

    async with httpx.AsyncClient(base_url=own_server.url, timeout=30.0, trust_env=False) as c:
        stream = await sse.read(c, run_id, params={"heartbeat": 0.05}, on_read=stop_once)

    assert len(exit_code) == 1  # it stopped by itself (uvicorn re-raises SIGTERM: -15)
    assert stream.closed_by_server
    last = stream.frames[-1]
    assert (last.event, last.data["reason"]) == ("reconnect", "shutdown")
