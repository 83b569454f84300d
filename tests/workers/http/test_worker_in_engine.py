"""The http node type in a running embedded engine: submitted through the API, executed
from `aob.tasks.http` by a WorkerHost, completed or failed in the run's events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aob.platform.api.app import create_app
from aob.platform.settings import Settings
from aob.workers.host import WorkerHost
from aob.workers.http import HttpWorker, HttpWorkerSettings
from aob.workers.http.settings import SecretBinding
from tests.workers.http.servers import Request, Response, Server

SECRET = "tok-5f0e1d2c3b4a"
BINDING = {"value": SECRET, "format": "Bearer {value}", "hosts": ["127.0.0.1"]}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    # The engine runs no http worker of its own: this test runs one with its own guard.
    app = create_app(Settings(data_dir=tmp_path / "data", workers=["builtin", "hitl", "agent"]))
    async with app.router.lifespan_context(app):
        settings = HttpWorkerSettings(  # type: ignore[call-arg]
            _env_file=None,
            allow=["127.0.0.1"],
            ports=["1-65535"],
            secrets={"api": SecretBinding.model_validate(BINDING)},
        )
        worker = HttpWorker(settings, registry=CollectorRegistry())
        host = WorkerHost(app.state.engine.log, worker.node_type(), worker_id="http")
        await host.start()
        stop = asyncio.Event()
        running = asyncio.create_task(host.run(stop))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://aob") as client:
                yield client
        finally:
            stop.set()
            await running
            await worker.aclose()


async def run_to_end(
    api: httpx.AsyncClient, definition: dict[str, Any], inputs: Any
) -> dict[str, Any]:
    response = await api.post("/api/v1/runs", json={"definition": definition, "inputs": inputs})
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    for _ in range(500):
        run: dict[str, Any] = (await api.get(f"/api/v1/runs/{run_id}")).json()
        if run["status"] in {"completed", "failed", "cancelled"}:
            return run
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not finish")


async def test_an_http_node_feeds_its_output_downstream(api, server: Server):
    def price(request: Request) -> Response:
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        return Response(200, {"sku": request.path.rsplit("/", 1)[1], "price": 12.5})

    server.route("/prices/abc", price)
    definition = {
        "name": "price-check",
        "nodes": [
            {
                "id": "fetch",
                "type": "http",
                "config": {
                    "url": f"http://127.0.0.1:{server.port}/prices/{{{{ .inputs.sku }}}}",
                    "secrets": ["api"],
                },
            },
            {
                "id": "double",
                "type": "transform",
                "config": {"expr": ".nodes.fetch.body.price * 2"},
            },
        ],
        "edges": [{"from": "fetch", "to": "double"}],
        "output": ".nodes.double",
    }
    run = await run_to_end(api, definition, {"sku": "abc"})
    assert run["status"] == "completed", run
    assert run["output"] == 25.0
    events = (await api.get(f"/api/v1/runs/{run['run_id']}/events")).json()
    assert SECRET not in json.dumps(events)


async def test_a_blocked_request_fails_its_node_with_the_reason(api, server: Server):
    definition = {
        "name": "ssrf",
        "nodes": [
            {
                "id": "peek",
                "type": "http",
                "config": {"url": "http://169.254.169.254/latest/meta-data/"},
            }
        ],
    }
    run = await run_to_end(api, definition, {})
    assert run["status"] == "failed"
    events = json.dumps((await api.get(f"/api/v1/runs/{run['run_id']}/events")).json())
    assert "ip layer, rule cloud-metadata" in events
    assert server.connections == 0
