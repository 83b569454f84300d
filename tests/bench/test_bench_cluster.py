"""Smoke test: the cluster benchmark starts the services as processes on the tests'
Kafka broker and PostgreSQL, drives runs through the API, and reports what it
measured (untimed: the figures are the benchmark's, not the test's)."""

from __future__ import annotations

import pytest

from bench import cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_cluster_benchmark_measures_runs_through_every_service(
    kafka_bootstrap: str, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tests' servers, as an operator's would be named: nothing is started here.
    monkeypatch.setenv("AOB_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("AOB_DATABASE_URL", postgres_dsn)
    sizes = cluster.AimSizes(runs=12, reps=2, concurrency=4, one_at_a_time=3)

    results = cluster.aim(sizes, fsync=True, spy=None)

    assert len(results["throughput"]) == sizes.reps
    assert all(rate > 0 for rate in results["throughput"])
    assert len(results["latency_ms"]) == sizes.one_at_a_time
    assert all(ms > 0 for ms in results["latency_ms"])
    # Per service process (the servers' own are not ours here): the API, the projector
    # and the coordinator work on every run; the transform DAG's steps are decided by
    # the coordinator, so the workers process may spend nothing.
    assert set(results["cpu_ms_per_run"]) == {
        "api-1",
        "projector-1",
        "coordinator-1",
        "workers-1",
    }
    cpu = results["cpu_ms_per_run"]
    assert all(cpu[name] > 0 for name in ("api-1", "projector-1", "coordinator-1"))
    assert "synchronous_commit=" in results["durability"]["postgres"]

    text = cluster.render_aim(results, sizes, None)
    assert f"throughput ({sizes.reps} x {sizes.runs} runs, {sizes.concurrency} clients)" in text
    assert f"one at a time ({sizes.one_at_a_time} runs): p50" in text
