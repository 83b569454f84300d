"""`aob server <service>` processes run workflows together, report their health, and
the audit commands read their log and rebuild their read models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster_services.conftest import Cluster

pytestmark = pytest.mark.slow

DIAMOND = {
    "name": "diamond",
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expr": ".inputs.x + 1"}},
        {"id": "b", "type": "transform", "config": {"expr": ".nodes.a * 2"}},
        {"id": "c", "type": "transform", "config": {"expr": ".nodes.a * 3"}},
        {"id": "d", "type": "transform", "config": {"expr": ".nodes.b + .nodes.c"}},
    ],
    "edges": [
        {"from": "a", "to": "b"},
        {"from": "a", "to": "c"},
        {"from": "b", "to": "d"},
        {"from": "c", "to": "d"},
    ],
    "output": ".nodes.d",
}


def finished(api: httpx.Client, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run: dict[str, Any] = api.get(f"/api/v1/runs/{run_id}").json()
        if run["status"] in ("completed", "failed", "cancelled"):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s")


def audit(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aob.platform", "audit", *args],
        cwd=cluster.directory,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_services_in_separate_processes_run_a_workflow(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.url("api"), timeout=10) as api:
        created = api.post("/api/v1/workflows", json={"definition": DIAMOND})
        assert created.status_code == 201, created.text
        # The API reads its own write from the projector's process.
        assert api.get("/api/v1/workflows/diamond").json()["version"] == 1
        submitted = api.post("/api/v1/runs", json={"tag": "diamond", "inputs": {"x": 1}})
        assert submitted.status_code == 202, submitted.text
        run = finished(api, submitted.json()["run_id"])
    assert (run["status"], run["output"]) == ("completed", 10), cluster.logs()
    assert {n["node_id"] for n in run["nodes"] if n["status"] == "completed"} == set("abcd")


def test_the_fanout_service_streams_a_run_it_did_not_see_submitted(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.url("api"), timeout=10) as api:
        run_id = api.post("/api/v1/runs", json={"definition": DIAMOND}).json()["run_id"]
        assert finished(api, run_id)["status"] == "completed"
        timeline = api.get(f"/api/v1/runs/{run_id}/events").json()["items"]
    stream = httpx.get(
        f"{cluster.url('fanout')}/api/v1/runs/{run_id}/stream",
        params={"from": "start"},
        timeout=10,
    )
    assert stream.status_code == 200
    ids = [line.removeprefix("id: ") for line in stream.text.splitlines() if line.startswith("id:")]
    assert ids[: len(timeline)] == [str(event["offset"]) for event in timeline]
    assert "event: end" in stream.text
    # The fanout service serves streams only.
    assert httpx.post(f"{cluster.url('fanout')}/api/v1/runs", json={}).status_code in (404, 405)


def test_every_service_reports_its_dependencies(cluster: Cluster) -> None:
    for role in ("api", "coordinator", "projector", "workers", "fanout"):
        response = httpx.get(cluster.url(role) + "/health", timeout=10)
        assert response.status_code == 200, (role, response.text)
        health = response.json()
        assert health["service"] == f"aob-{role}"
        assert health["backends"] == {"event_log": "kafka", "read_models": "postgres"}
        assert health["dependencies"] == {"event_log": "ok", "read_models": "ok"}
        metrics = httpx.get(cluster.url(role) + "/metrics", timeout=10)
        assert metrics.status_code == 200
        assert "process_cpu_seconds_total" in metrics.text
    # Only the API serves the API.
    assert httpx.get(cluster.url("coordinator") + "/api/v1/runs").status_code == 404


def test_audit_reads_history_from_the_log_and_verifies_the_read_models(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.url("api"), timeout=10) as api:
        submitted = api.post("/api/v1/runs", json={"definition": DIAMOND, "inputs": {"x": 2}})
        run_id = submitted.json()["run_id"]
        assert finished(api, run_id)["status"] == "completed"
        timeline = api.get(f"/api/v1/runs/{run_id}/events").json()["items"]
        from_log = api.get(f"/api/v1/runs/{run_id}/events", params={"source": "log"}).json()
    assert from_log["items"] == timeline

    history = audit(cluster, "history", run_id)
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert len(lines) == len(timeline)
    assert "RunSubmitted" in lines[0]
    assert "RunCompleted" in lines[-1]

    verified = audit(cluster, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "identical to the live read models" in verified.stdout


GATED = {
    "name": "gated",
    "nodes": [
        {"id": "draft", "type": "noop", "config": {"output": "text"}},
        {"id": "gate", "type": "hitl", "config": {"message": "Publish?"}},
        {"id": "publish", "type": "transform", "config": {"expr": '"published"'}},
    ],
    "edges": [{"from": "draft", "to": "gate"}, {"from": "gate", "to": "publish"}],
    "output": ".nodes.publish",
}


def test_a_run_waiting_on_a_person_survives_restarting_the_coordinator_and_workers(
    cluster: Cluster,
) -> None:
    with httpx.Client(base_url=cluster.url("api"), timeout=10) as api:
        run_id = api.post("/api/v1/runs", json={"definition": GATED}).json()["run_id"]
        pending: list[dict[str, Any]] = []
        for _ in range(400):
            pending = api.get("/api/v1/approvals", params={"run_id": run_id}).json()["items"]
            if pending:
                break
            time.sleep(0.05)
        assert len(pending) == 1, cluster.logs()

        cluster.restart("coordinator", "workers")

        decided = api.post(
            f"/api/v1/approvals/{pending[0]['approval_id']}/decide",
            json={"decision": "approve"},
            headers={"X-Aob-Actor": "alice"},
        )
        assert decided.status_code == 200, decided.text
        run = finished(api, run_id)
    assert (run["status"], run["output"]) == ("completed", "published"), cluster.logs()


def test_services_shut_down_gracefully_on_sigterm(cluster: Cluster) -> None:
    # Last in the module: it stops the services. uvicorn shuts the app down (the
    # engine's hosts stop, the log and the database are closed), then lets SIGTERM end
    # the process as it would have without a handler.
    codes = cluster.stop()
    assert set(codes.values()) == {-signal.SIGTERM}, cluster.logs()
    assert "Traceback" not in cluster.logs()
    assert "ERROR" not in cluster.logs()


@pytest.mark.parametrize("service", ["api", "coordinator", "projector", "workers", "fanout"])
def test_a_service_without_a_shared_log_and_database_refuses_to_start(
    service: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOB_")}
    done = subprocess.run(
        [sys.executable, "-m", "aob.platform", service],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "set AOB_KAFKA_BOOTSTRAP and AOB_DATABASE_URL" in done.stderr
