"""Approvals that organisations need (issue 16) on the cluster backend: Kafka and
PostgreSQL, one process per service. A quorum with a duplicate vote, a signal sent
before its wait began, and an escalation whose deadline then decides: the Postgres read
models (migration 0016: votes, policy, level) and the coordinator and hitl services
handle ApprovalVoted, SignalReceived and ApprovalEscalated as the embedded engine does."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from tests.cluster_services.conftest import Cluster
from tests.cluster_services.test_services import finished
from tests.hitl.harness import node, review

pytestmark = pytest.mark.slow

T = TypeVar("T")


@pytest.fixture
def api(cluster: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url("api"), timeout=10) as client:
        yield client


def eventually(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """`check()`'s first truthy answer, polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def submit(api: httpx.Client, definition: dict[str, Any]) -> str:
    submitted = api.post("/api/v1/runs", json={"definition": definition})
    assert submitted.status_code == 202, submitted.text
    run_id: str = submitted.json()["run_id"]
    return run_id


def pending(api: httpx.Client, run_id: str) -> dict[str, Any]:
    def asked() -> list[dict[str, Any]]:
        page = api.get("/api/v1/approvals", params={"run_id": run_id, "status": "pending"})
        items: list[dict[str, Any]] = page.json()["items"]
        return items

    [approval] = eventually(asked, f"an approval of {run_id}")
    return approval


def decide(api: httpx.Client, approval_id: str, decision: str, actor: str) -> httpx.Response:
    return api.post(
        f"/api/v1/approvals/{approval_id}/decide",
        json={"decision": decision, "comments": f"{actor} says {decision}"},
        headers={"X-Aob-Actor": actor},
    )


def events_of(api: httpx.Client, run_id: str, kind: str) -> list[dict[str, Any]]:
    items = api.get(f"/api/v1/runs/{run_id}/events", params={"limit": 1000}).json()["items"]
    return [e["data"] for e in items if e["type"] == kind]


def test_a_quorum_of_two_counts_a_duplicate_vote_once(cluster: Cluster, api: httpx.Client) -> None:
    run_id = submit(api, review({"approvers": ["ann", "bob", "cy"], "quorum": 2}))
    approval = pending(api, run_id)
    approval_id = approval["approval_id"]
    assert approval["policy"]["quorum"] == 2  # kept by the Postgres read model

    first = decide(api, approval_id, "approve", "ann")
    assert first.status_code == 200, first.text
    assert [(v["voter"], v["decision"]) for v in first.json()["votes"]] == [("ann", "approve")]
    again = decide(api, approval_id, "reject", "ann")
    assert again.status_code == 200, again.text
    assert again.json()["duplicate_vote"] is True
    assert api.get(f"/api/v1/runs/{run_id}").json()["status"] == "waiting"

    assert decide(api, approval_id, "approve", "bob").status_code == 200
    run = finished(api, run_id)
    assert run["status"] == "completed", cluster.logs()
    gate = node(run, "gate")["output"]
    assert (gate["decision"], gate["won"], gate["decided_by"]) == (
        "approve",
        "approval",
        "system:quorum",
    )
    assert [(v["voter"], v["comments"]) for v in gate["votes"]] == [
        ("ann", "ann says approve"),
        ("bob", "bob says approve"),
    ]
    assert run["output"]["publish"] == "published"
    assert [v["voter"] for v in events_of(api, run_id, "ApprovalVoted")] == ["ann", "bob"]
    assert len(events_of(api, run_id, "ApprovalDecided")) == 1
    decided = api.get(f"/api/v1/approvals/{approval_id}").json()
    assert (decided["status"], [v["voter"] for v in decided["votes"]]) == (
        "approved",
        ["ann", "bob"],
    )


def test_a_signal_sent_before_the_wait_began_ends_it(cluster: Cluster, api: httpx.Client) -> None:
    definition = review({"signals": ["paid"], "timeout_ms": 600_000})
    definition["nodes"].insert(0, {"id": "first", "type": "hitl", "config": {}})
    definition["edges"].insert(0, {"from": "first", "to": "draft"})
    run_id = submit(api, definition)
    first = pending(api, run_id)
    sent = api.post(
        f"/api/v1/runs/{run_id}/signals/paid",
        json={"ref": "early"},
        headers={"Idempotency-Key": "pay-1", "X-Aob-Actor": "bank"},
    )
    assert sent.status_code == 202, sent.text
    assert decide(api, first["approval_id"], "approve", "ann").status_code == 200

    run = finished(api, run_id)
    assert run["status"] == "completed", cluster.logs()
    gate = node(run, "gate")["output"]
    assert (gate["won"], gate["decision"], gate["decided_by"]) == (
        "signal",
        "approve",
        "system:signal:paid",
    )
    assert (gate["signal"]["payload"], gate["signal"]["sent_by"]) == ({"ref": "early"}, "bank")
    assert [s["name"] for s in events_of(api, run_id, "SignalReceived")] == ["paid"]


def test_an_escalated_approval_then_times_out(cluster: Cluster, api: httpx.Client) -> None:
    gate = {
        "approvers": ["ann"],
        "timeout_ms": 1000,
        "escalation": [{"approvers": ["boss"], "timeout_ms": 1000}],
        "on_timeout": "reject",
    }
    run_id = submit(api, review(gate))
    approval_id = pending(api, run_id)["approval_id"]

    run = finished(api, run_id)
    assert run["status"] == "completed", cluster.logs()
    [escalation] = events_of(api, run_id, "ApprovalEscalated")
    assert (escalation["level"], escalation["approvers"]) == (1, ["ann", "boss"])
    assert escalation["deadline"] is not None
    output = node(run, "gate")["output"]
    assert (output["decision"], output["won"], output["decided_by"]) == (
        "reject",
        "timeout",
        "system:timeout",
    )
    assert run["output"]["revise"] == "revised"
    decided = api.get(f"/api/v1/approvals/{approval_id}").json()
    assert (decided["status"], decided["level"], decided["approvers"]) == (
        "rejected",
        1,
        ["ann", "boss"],
    )
