"""/metrics and /health of the real dev server, and the trace id of a run carried from
the API through its events to the worker that runs its node."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx

from aob.events.types import NodeScheduled
from aob.platform.api.app import create_app
from aob.platform.observability import JsonFormatter
from aob.platform.settings import Settings
from aob.workers.host import NodeType, WorkerHost


def sample(metrics: str, name: str, **labels: str) -> float:
    """A sample's value in an exposition (labels may be a subset)."""
    for line in metrics.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_runs_nodes_requests_and_consumer_lag(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, workers=["builtin"]))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://aob") as client:
            before = (await client.get("/metrics")).text
            definition = {
                "name": "m",
                "nodes": [{"id": "a", "type": "transform", "config": {"expr": '"x"'}}],
            }
            run_id = (await client.post("/api/v1/runs", json={"definition": definition})).json()[
                "run_id"
            ]
            await _finished(client, run_id)
            after = (await client.get("/metrics")).text
            health = await client.get("/health")
    grew = {
        ("workflow_runs_total", ("event", "submitted")): 1,
        ("workflow_runs_total", ("event", "completed")): 1,
        ("node_executions_total", ("node_type", "transform")): 1,
        ("completion_signals_total", ("type", "NodeCompleted")): 1,
    }
    for (name, (key, value)), delta in grew.items():
        assert sample(after, name, **{key: value}) - sample(before, name, **{key: value}) == delta
    assert sample(after, "http_requests_total", route="/api/v1/runs", status="202") >= 1
    assert sample(after, "http_requests_total", route="/api/v1/runs/{run_id}", status="200") >= 1
    assert re.search(r'^consumer_lag\{group="aob-projector",topic="aob.runs"\} ', after, re.M)
    assert re.search(
        r'^consumer_lag\{group="aob-worker-transform",topic="aob.tasks.transform"\} 0', after, re.M
    )
    assert "websocket_connections" in after
    assert health.status_code == 200
    assert health.json()["dependencies"]["event_log"] == "ok"


async def _finished(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    for _ in range(500):
        run: dict[str, Any] = (await client.get(f"/api/v1/runs/{run_id}")).json()
        if run["status"] in ("completed", "failed"):
            return run
        await asyncio.sleep(0.02)
    raise AssertionError("run did not finish")


async def test_a_runs_trace_id_reaches_the_workers_log_lines(tmp_path: Path) -> None:
    """The caller's traceparent becomes the run's trace id: the API's answer names it,
    every event carries it, and a node handler's log lines show it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("aob.test.node")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    app = create_app(Settings(data_dir=tmp_path, workers=["builtin"], node_types=["logs"]))
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"

    async def logs(task: NodeScheduled) -> Any:
        logger.info("handling %s", task.node_id)
        return "done"

    try:
        async with app.router.lifespan_context(app):
            stop = asyncio.Event()
            worker = WorkerHost(app.state.engine.log, NodeType("logs", logs), worker_id="t")
            await worker.start()
            running = asyncio.create_task(worker.run(stop))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://aob") as client:
                definition = {
                    "name": "m",
                    "nodes": [{"id": "a", "type": "logs"}, {"id": "b", "type": "logs"}],
                }
                submitted = await client.post(
                    "/api/v1/runs",
                    json={"definition": definition},
                    headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
                )
                assert submitted.headers["x-trace-id"] == trace
                assert submitted.json()["trace_id"] == trace
                run_id = submitted.json()["run_id"]
                await _finished(client, run_id)
                events = (await client.get(f"/api/v1/runs/{run_id}/events")).json()["items"]
            stop.set()
            await running
    finally:
        logger.removeHandler(handler)
    assert {e["trace_id"] for e in events} == {trace}
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert sorted(line["message"] for line in lines) == ["handling a", "handling b"]
    assert {(line["trace_id"], line["run_id"]) for line in lines} == {(trace, run_id)}
