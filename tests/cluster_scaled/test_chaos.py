"""Every service scaled out (2 APIs, 2 coordinators, 2 projectors, 3 workers), each
instance a process, under a mix of joins, retries with timeouts, approvals with
deadlines and http calls; mid-load one instance of each service is killed with
`kill -9` and started again, and the broker restarts once. Afterwards, read from the
log itself: every run ended exactly once and none was lost, no event was appended
twice (but the announcement of a task run again after its worker died), the outside
world saw each request once (a worker killed mid-request may have sent its attempt
twice, with the same key), and the read models equal a rebuild from offset 0."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import pytest

from aob.workers.http.idempotency import idempotency_key
from tests.cluster_scaled.conftest import Broker, CountingServer, ScaledCluster
from tests.cluster_scaled.workload import Load, read_runs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

APIS = ("api-1", "api-2")
SERVICES = (
    *APIS,
    "coordinator-1",
    "coordinator-2",
    "projector-1",
    "projector-2",
    "workers-1",
    "workers-2",
    "workers-3",
)
WAVE = 10  # runs per wave: two of each kind


def test_a_scaled_cluster_loses_nothing_and_repeats_nothing_through_kills_and_a_broker_restart(
    scaled_cluster: ScaledCluster, scaled_broker: Broker
) -> None:
    cluster = scaled_cluster
    with CountingServer(lambda: cluster.pids("workers")) as server:
        cluster.env["AOB_HTTP_ALLOW"] = f"127.0.0.1:{server.port}"
        cluster.start(*SERVICES)
        load = Load(lambda: {n: cluster.url(n) for n in cluster.running("api")}, server.base_url)

        load.submit(WAVE)
        load.wait_finished(at_least=3, timeout=60)
        # Work is in flight on every service: the coordinator and a worker die first.
        cluster.kill("workers-1")
        cluster.kill("coordinator-1")
        load.submit(WAVE)
        cluster.kill("api-1")
        cluster.kill("projector-1")
        load.submit(WAVE)  # through api-2 alone
        cluster.start("api-1", "coordinator-1", "projector-1", "workers-1")
        load.submit(WAVE)
        load.wait_finished(at_least=WAVE * 2, timeout=90)
        scaled_broker.restart()
        load.submit(WAVE)
        final = load.wait_all(timeout=120)

        requests = server.snapshot()
        assert cluster.exited() == {}, cluster.logs()

    # Each run ended as its kind must: joins, retries and http calls completed, the
    # approved runs approved (through the other API), the others rejected by
    # their deadline (which skips `publish`).
    outcomes = {r.run_id: (final[r.run_id]["status"], final[r.run_id]["output"]) for r in load.runs}
    expected = {r.run_id: ("completed", r.expected) for r in load.runs}
    wrong = {
        r.run_id: {"kind": r.kind, "run": final[r.run_id]}
        for r in load.runs
        if outcomes[r.run_id] != expected[r.run_id]
    }
    assert wrong == {}

    # The log: every run (also one whose API died before it answered) ended exactly once.
    runs_log = read_runs(scaled_broker.bootstrap, cluster.env["AOB_TOPIC_PREFIX"])

    # The slow first attempts timed out and were retried; one whose coordinator was
    # killed has its timeout fired by the partition's next owner, after the session
    # timeout: the answer may come first, and then stands.
    attempts = {
        r.run_id: max(n["attempt"] for n in final[r.run_id]["nodes"] if n["node_id"] == "slow")
        for r in load.runs
        if r.kind == "retry"
    }
    assert any(attempt >= 2 for attempt in attempts.values())
    not_retried = {run_id for run_id, attempt in attempts.items() if attempt < 2}
    assert {r for r in not_retried if not runs_log.answered_before_timeout(r, "slow")} == set()
    # Appended twice: only a task's announcement (NodeStarted), when its worker died
    # (or gave the task up in a rebalance) before recording the outcome, and the
    # partition's next owner ran it again under the same derived id, which the fold
    # takes once.
    duplicates = runs_log.duplicate_ids()
    repeated_outcomes = {
        event_id: runs_log.copies(event_id)
        for event_id in duplicates
        if runs_log.type_of(event_id) != "NodeStarted"
    }
    assert not repeated_outcomes, "\n".join(
        [f"killed: {cluster.killed}"]
        + [f"{event_id}: {copies}" for event_id, copies in repeated_outcomes.items()]
    )
    assert all(copies == 2 for copies in duplicates.values()), duplicates
    submitted = runs_log.submitted()
    assert {r.run_id for r in load.runs} <= submitted
    ended = runs_log.terminal_counts()
    assert {run_id: ended.get(run_id, 0) for run_id in submitted} == dict.fromkeys(submitted, 1)

    # The counting server: each http attempt's key, sent once by the processes that lived
    # on; only a killed worker's attempt was sent again, and with the same key.
    scheduled = {idempotency_key(task): task for task in runs_log.scheduled("http")}
    senders: dict[str, list[int | None]] = defaultdict(list)
    for request in requests:
        senders[request.key].append(request.pid)
    assert set(senders) <= set(scheduled)
    # An attempt the server never saw was not lost: a worker took it (NodeStarted) and it
    # did not complete: a retried attempt's 1 s timeout can pass in the worker before its
    # request arrives, on a loaded machine (the worker's own deadline; seen under a hog).
    unsent = {key: task for key, task in scheduled.items() if key not in senders}
    lost = {
        key: sorted(runs_log.attempt_events(task))
        for key, task in unsent.items()
        if runs_log.attempt_events(task) != {"NodeStarted"}
    }
    assert lost == {}
    repeated = {
        key: pids
        for key, pids in senders.items()
        if len([pid for pid in pids if pid not in cluster.killed]) > 1
    }
    assert repeated == {}, f"killed workers: {cluster.killed}"

    # The read models equal their rebuild from offset 0.
    verified = subprocess.run(
        [sys.executable, "-m", "aob.platform", "audit", "verify"],
        cwd=cluster.directory,
        env=cluster.env | {"AOB_KAFKA_BOOTSTRAP": scaled_broker.bootstrap},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "identical to the live read models" in verified.stdout
