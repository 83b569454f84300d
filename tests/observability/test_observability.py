"""Metrics and structured logs: event-derived counters, consumer lag on a real log,
the HTTP middleware on a real app (route templates, trace ids, WebSocket gauge)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from aob.events.log.port import Append, TopicPartition
from aob.events.log.sqlite import SqliteEventLog
from aob.events.tracing import traced
from aob.events.types import (
    AgentUsageRecorded,
    ApprovalDecided,
    Event,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeSkipped,
    RunCompleted,
    RunSubmitted,
)
from aob.platform.observability import (
    HttpObservation,
    JsonFormatter,
    metrics_for,
    metrics_text,
    observe_events,
    record_consumer_lag,
    trace_id_of,
)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def event(payload: object, n: int = 0) -> Event:
    return Event(f"e{n}", "r1", 1_000 + n, payload, trace_id="t" * 32)  # type: ignore[arg-type]


def test_log_records_are_json_with_the_trace_and_run_of_the_work_at_hand() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("aob.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with traced("abc123", run_id="run-9"):
            logger.warning("node %s slow", "n1", extra={"node_id": "n1", "ms": 12})
        logger.warning("outside")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "node n1 slow"
    assert (first["trace_id"], first["run_id"]) == ("abc123", "run-9")
    assert (first["node_id"], first["ms"], first["level"]) == ("n1", 12, "warning")
    assert first["ts"].endswith("Z")
    assert "trace_id" not in second
    assert "run_id" not in second
    assert "ValueError: boom" in third["exception"]


def test_events_feed_the_seed_counters() -> None:
    registry = CollectorRegistry()
    metrics = metrics_for(registry)
    definition = {"nodes": [{"id": "a", "type": "agent"}, {"id": "b", "type": "http"}]}
    observe_events(
        metrics,
        [
            event(RunSubmitted("r1", definition, {}, ["agent", "http"]), 0),
            event(NodeScheduled("r1", "a", "agent", 0, 1, {}, {}), 1),
            event(NodeScheduled("r1", "b", "http", 0, 1, {}, {}), 1),
            event(AgentUsageRecorded("r1", "a", 0, 1, "gpt-x", 3, 10, 5, 15), 1),
            event(NodeCompleted("r1", "a", 0, 1, {"ok": True}), 2),
            event(NodeFailed("r1", "b", 0, 1, "503"), 3),
            event(NodeSkipped("r1", "c", 0, "dead path"), 4),
            event(ApprovalDecided("r1", "ap", "approve", "ann"), 5),
            event(RunCompleted("r1", {}), 6),
        ],
    )
    assert value(registry, "workflow_runs_total", event="submitted") == 1
    assert value(registry, "workflow_runs_total", event="completed") == 1
    assert value(registry, "node_executions_total", node_type="agent", outcome="completed") == 1
    assert value(registry, "node_executions_total", node_type="http", outcome="failed") == 1
    assert value(registry, "node_executions_total", node_type="", outcome="skipped") == 1
    assert value(registry, "agent_decisions_total", model="gpt-x") == 3
    assert value(registry, "hitl_approvals_total", decision="approve") == 1
    assert value(registry, "completion_signals_total", type="NodeCompleted") == 1
    assert value(registry, "completion_signals_total", type="NodeFailed") == 1
    text, content_type = metrics_text(registry)
    assert content_type.startswith("text/plain")
    for name in (
        "workflow_runs_total",
        "node_executions_total",
        "agent_decisions_total",
        "http_requests_total",
        "hitl_approvals_total",
        "completion_signals_total",
        "websocket_connections",
        "consumer_lag",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text.decode()
    assert metrics_for(registry) is metrics  # one set per registry


async def test_consumer_lag_is_end_minus_committed_per_group_and_topic(tmp_path: Path) -> None:
    log = await SqliteEventLog.open(tmp_path / "log.db")
    try:
        await log.create_topic("t", 2)
        await log.append([Append("t", f"k{i}", b"x") for i in range(10)])
        ends = await log.end_offsets("t")
        assert sum(ends.values()) == 10
        # The group read 3 records of partition 0 and all of partition 1.
        await log.commit("g", {TopicPartition("t", 0): 3, TopicPartition("t", 1): ends[1]})
        registry = CollectorRegistry()
        metrics = metrics_for(registry)
        projector_at = {TopicPartition("t", 0): ends[0], TopicPartition("t", 1): 0}
        lags = await record_consumer_lag(
            metrics, log, {"g": ["t"], "proj": ["t"]}, positions={"proj": projector_at}
        )
        assert lags == {("g", "t"): ends[0] - 3, ("proj", "t"): ends[1]}
        assert value(registry, "consumer_lag", group="g", topic="t") == ends[0] - 3
        assert value(registry, "consumer_lag", group="proj", topic="t") == ends[1]
    finally:
        await log.close()


def small_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        logging.getLogger("aob.test.http").warning("serving %s", item_id)
        return {"id": item_id}

    @app.websocket("/ws")
    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.receive_text()
        await websocket.close()

    return app


async def test_requests_are_counted_by_route_template_and_carry_their_trace() -> None:
    registry = CollectorRegistry()
    app = HttpObservation(small_app(), metrics_for(registry))
    transport = httpx.ASGITransport(app=app)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("aob.test.http").addHandler(handler)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
            first = await client.get("/items/1", headers={"traceparent": parent})
            await client.get("/items/2", headers={"x-trace-id": "mine"})
            missing = await client.get("/nowhere")
    finally:
        logging.getLogger("aob.test.http").removeHandler(handler)
    assert first.headers["x-trace-id"] == "ab" * 16
    assert missing.status_code == 404
    assert len(missing.headers["x-trace-id"]) == 32
    labels = {"method": "GET", "route": "/items/{item_id}", "status": "200"}
    assert value(registry, "http_requests_total", **labels) == 2
    assert value(registry, "http_requests_total", method="GET", route="unmatched", status="404")
    traces = [json.loads(line)["trace_id"] for line in stream.getvalue().splitlines()]
    assert traces == ["ab" * 16, "mine"]


def test_open_websockets_are_gauged() -> None:
    registry = CollectorRegistry()
    app = HttpObservation(small_app(), metrics_for(registry))
    with TestClient(app) as client, client.websocket_connect("/ws") as socket:
        assert socket.receive_text() == "hi"
        assert value(registry, "websocket_connections") == 1
        socket.send_text("bye")
    assert value(registry, "websocket_connections") == 0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"traceparent": "00-" + "0f" * 16 + "-" + "1" * 16 + "-01"}, "0f" * 16),
        ({"traceparent": "00-" + "zz" * 16 + "-" + "1" * 16 + "-01", "x-trace-id": "a"}, "a"),
        ({"x-trace-id": "x" * 65}, None),
        ({"x-trace-id": "bad\nid"}, None),
    ],
)
def test_trace_ids_from_headers_are_checked(headers: dict[str, str], expected: str | None) -> None:
    found = trace_id_of(headers)
    if expected is None:
        assert len(found) == 32
        assert found not in headers.values()
    else:
        assert found == expected
