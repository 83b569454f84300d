"""Backends the end-to-end conformance suite runs against, and a client for their API.

- `embedded`: `aob server dev`'s assembly (SQLite log and read models, one engine);
- `cluster`: Kafka and PostgreSQL, with the services as separate engines (api,
  coordinator, projector, workers), each with its own Kafka clients and database
  pool, talking only through the log and the read models, as separate processes
  do. Each test gets fresh topics and consumer groups (a topic prefix) and a fresh
  schema.

Add a backend by adding a factory to `BACKENDS`: an async context manager that takes
the test's fixture request, temporary directory and the suite's execution sink, and
yields a `Backend` whose API is up, with the suite's test node types served by a worker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from aob.events.log.port import EventLog
from aob.platform.api.app import create_app
from aob.platform.engine import Engine, open_log
from aob.platform.settings import Settings
from aob.workers.host import WorkerHost
from tests.e2e.nodes import TEST_NODE_TYPES, ExecutionSink, conformance_node_types

TERMINAL = {"completed", "failed", "cancelled"}


@dataclass
class Backend:
    """A running aob with its HTTP API, as the suite sees it."""

    name: str
    client: httpx.AsyncClient
    sink: ExecutionSink

    async def submit(self, definition: dict[str, Any], inputs: Any = None, **extra: Any) -> str:
        body = {"definition": definition, "inputs": inputs or {}, **extra}
        response = await self.client.post("/api/v1/runs", json=body)
        assert response.status_code == 202, response.text
        run_id: str = response.json()["run_id"]
        return run_id

    async def run(self, run_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        return run

    async def wait(
        self, run_id: str, statuses: set[str] = TERMINAL, timeout: float = 60.0
    ) -> dict[str, Any]:
        """The run once its status is one of `statuses`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            run = await self.run(run_id)
            if run["status"] in statuses:
                return run
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s")
            await asyncio.sleep(0.02)

    async def wait_node(self, run_id: str, node_id: str, status: str) -> dict[str, Any]:
        for _ in range(750):
            run = await self.run(run_id)
            node = nodes_of(run).get(node_id)
            if node is not None and node["status"] == status:
                return run
            await asyncio.sleep(0.02)
        raise AssertionError(f"node {node_id} of run {run_id} never became {status}")

    async def complete(self, definition: dict[str, Any], inputs: Any = None) -> dict[str, Any]:
        return await self.wait(await self.submit(definition, inputs))

    async def events(self, run_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"/api/v1/runs/{run_id}/events")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items


def nodes_of(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run's latest node states by node id."""
    latest: dict[str, dict[str, Any]] = {}
    for node in run["nodes"]:
        known = latest.get(node["node_id"])
        if known is None or node["iteration"] >= known["iteration"]:
            latest[node["node_id"]] = node
    return latest


BackendFactory = Callable[
    [pytest.FixtureRequest, Path, ExecutionSink], AbstractAsyncContextManager[Backend]
]


@asynccontextmanager
async def suite_workers(
    event_log: EventLog, sink: ExecutionSink, stop: asyncio.Event | None = None
) -> AsyncIterator[None]:
    """The suite's own node types, served beside the backend's workers."""
    stop = stop or asyncio.Event()
    workers = [WorkerHost(event_log, t, worker_id="suite") for t in conformance_node_types(sink)]
    for worker in workers:
        await worker.start()
    tasks = [asyncio.create_task(worker.run(stop)) for worker in workers]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


@asynccontextmanager
async def api_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://aob") as client:
        yield client


@asynccontextmanager
async def embedded(
    request: pytest.FixtureRequest, tmp_path: Path, sink: ExecutionSink
) -> AsyncIterator[Backend]:
    """`aob server dev`'s assembly in this process: SQLite log and read models."""
    settings = Settings(
        data_dir=tmp_path / "data",
        node_types=TEST_NODE_TYPES,
        kafka_bootstrap=None,  # whatever the environment says
        database_url=None,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        engine: Engine = app.state.engine
        async with suite_workers(engine.log, sink), api_client(app) as client:
            yield Backend("embedded", client, sink)


CLUSTER_ROLES = ("projector", "coordinator", "workers")


@asynccontextmanager
async def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, sink: ExecutionSink
) -> AsyncIterator[Backend]:
    """Kafka + PostgreSQL, one engine per service, only the log and the database between
    them. Few partitions: topic creation is most of a test's setup here."""
    settings = Settings(
        data_dir=tmp_path / "data",
        node_types=TEST_NODE_TYPES,
        kafka_bootstrap=request.getfixturevalue("kafka_bootstrap"),
        database_url=request.getfixturevalue("postgres_schemas").create(),
        topic_prefix=f"e2e.{uuid.uuid4().hex[:12]}.",
        kafka_poll_interval=0.02,
        runs_partitions=2,
        workflows_partitions=1,
        tasks_partitions=1,
    )
    services = await open_services(settings, CLUSTER_ROLES)
    stop = asyncio.Event()
    app = create_app(settings, "api")
    try:
        await asyncio.gather(*(engine.start() for engine in services))
        suite_log = await open_log(settings, "suite")
        try:
            async with (
                app.router.lifespan_context(app),
                suite_workers(suite_log, sink, stop),
                api_client(app) as client,
            ):
                try:
                    yield Backend("cluster", client, sink)
                finally:  # every service stops at once, not one after the other
                    stop.set()
                    for engine in [*services, app.state.engine]:
                        engine.request_stop()
        finally:
            await suite_log.close()
    finally:
        await asyncio.gather(*(engine.stop() for engine in services))


async def open_services(settings: Settings, roles: tuple[str, ...]) -> list[Engine]:
    """An engine per role, opened at once; none left open if one fails."""
    opened = await asyncio.gather(
        *(Engine.open(settings, role) for role in roles), return_exceptions=True
    )
    engines = [engine for engine in opened if isinstance(engine, Engine)]
    errors = [error for error in opened if isinstance(error, BaseException)]
    if errors:
        await asyncio.gather(*(engine.stop() for engine in engines))
        raise errors[0]
    return engines


BACKENDS: dict[str, BackendFactory] = {"embedded": embedded, "cluster": cluster}


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with BACKENDS[request.param](request, tmp_path, ExecutionSink()) as running:
        yield running
