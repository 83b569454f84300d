"""In a cluster, the services' spans join the run's one trace: api, coordinator and
workers processes (Kafka, Postgres) export by OTLP/HTTP to a collector the test runs,
and each span's parent, written into the event it handles, is found in another process."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.cluster_services import conftest as services
from tests.cluster_services.conftest import Cluster, cluster_env
from tests.fixtures.postgres import PostgresSchemas

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

CHAIN = {
    "name": "chain",
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expr": ".inputs.x + 1"}},
        # Off the jq fast path (`first`): a worker executes it; `a` the coordinator.
        {"id": "b", "type": "transform", "config": {"expr": "[.nodes.a * 2] | first"}},
    ],
    "edges": [{"from": "a", "to": "b"}],
    "output": ".nodes.b",
}


class Collector:
    """An OTLP/HTTP trace receiver on loopback: (service, span) of every span sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Receiver,), {"collector": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def receive(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = resource_spans.resource.attributes
                attributes = {a.key: a.value.string_value for a in resource}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((attributes["service.name"], span))

    def of_trace(self, trace_id: str) -> list[tuple[str, Any]]:
        with self._lock:
            return [(s, span) for s, span in self.spans if span.trace_id.hex() == trace_id]


class _Receiver(BaseHTTPRequestHandler):
    collector: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.path == "/v1/traces"
        self.collector.receive(body)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    thread = threading.Thread(target=running.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.httpd.shutdown()
        running.httpd.server_close()


@pytest.fixture
def traced_cluster(
    kafka_bootstrap: str,
    postgres_dsn: str,
    tmp_path: Path,
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cluster]:
    # Four services importing everything at once on a shared 2-core machine.
    monkeypatch.setattr(services, "START_TIMEOUT", 180.0)
    schemas = PostgresSchemas(postgres_dsn)
    env = cluster_env(kafka_bootstrap, schemas.create(), tmp_path / "data")
    env.pop("OTEL_SERVICE_NAME", None)
    env.update(AOB_OTLP_ENDPOINT=collector.url, OTEL_BSP_SCHEDULE_DELAY="100")
    running = Cluster(tmp_path, env)
    try:
        # The api last: at start-up it waits for the topics the others create.
        running.start("coordinator", "projector", "workers")
        running.start("api")
        yield running
    finally:
        running.stop()
        schemas.drop_all()


def _finished(api: httpx.Client, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run: dict[str, Any] = api.get(f"/api/v1/runs/{run_id}").json()
        if run["status"] in ("completed", "failed", "cancelled"):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


def _spans_until(
    collector: Collector, trace_id: str, names: dict[str, int]
) -> list[tuple[str, Any]]:
    """The trace's spans once `names` (name: how many) and every span's parent have
    arrived: export is batched per process, so spans come in several batches."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        spans = collector.of_trace(trace_id)
        arrived = Counter(span.name for _, span in spans)
        ids = {span.span_id for _, span in spans}
        parents_in = all(not s.parent_span_id or s.parent_span_id in ids for _, s in spans)
        if parents_in and all(arrived[name] >= count for name, count in names.items()):
            return spans
        time.sleep(0.05)
    names_seen = [span.name for _, span in collector.of_trace(trace_id)]
    raise AssertionError(f"spans of {trace_id}: {names_seen}")


def test_spans_of_separate_services_join_the_runs_trace(
    traced_cluster: Cluster, collector: Collector
) -> None:
    with httpx.Client(base_url=traced_cluster.url("api"), timeout=10) as api:
        submitted = api.post("/api/v1/runs", json={"definition": CHAIN, "inputs": {"x": 1}})
        assert submitted.status_code == 202, submitted.text
        run = _finished(api, submitted.json()["run_id"])
    assert (run["status"], run["output"]) == ("completed", 4), traced_cluster.logs()
    trace_id = run["trace_id"]
    spans = _spans_until(
        collector,
        trace_id,
        {"POST /api/v1/runs": 1, "aob.decide RunSubmitted": 1, "aob.execute transform": 2},
    )
    by_id = {span.span_id.hex(): (service, span) for service, span in spans}
    services = {service for service, _ in spans}
    assert {"aob-api", "aob-coordinator", "aob-workers"} <= services, services

    def parent_service(span: Any) -> str:
        return by_id[span.parent_span_id.hex()][0]

    (request,) = [s for svc, s in spans if s.name == "POST /api/v1/runs"]
    (decided,) = [s for svc, s in spans if s.name == "aob.decide RunSubmitted"]
    assert decided.parent_span_id == request.span_id  # coordinator <- api
    assert parent_service(decided) == "aob-api"
    executions = [(svc, s) for svc, s in spans if s.name == "aob.execute transform"]
    assert sorted(svc for svc, _ in executions) == ["aob-coordinator", "aob-workers"]
    for _, execution in executions:  # workers <- coordinator, and inline in it
        assert parent_service(execution) == "aob-coordinator"
    # Each span's parent is in the trace (arrived from whichever process wrote it).
    assert all(not s.parent_span_id or s.parent_span_id.hex() in by_id for _, s in spans)
