"""The approvals read model: what the HITL service and the API rely on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from aob.events.types import (
    RUNS_TOPIC,
    ApprovalDecided,
    ApprovalRequested,
    Event,
    NodeScheduled,
    Payload,
    RunCancelled,
    RunSubmitted,
)
from aob.projections.readmodels import Position, SqliteReadModels

DEFINITION = {"name": "r", "nodes": [{"id": "gate", "type": "hitl"}]}


class Log:
    """Feeds events to a store at consecutive offsets of one partition."""

    def __init__(self, store: SqliteReadModels) -> None:
        self.store = store
        self.offset = 0

    def add(
        self, event_id: str, payload: Payload, *, at: int = 1_000, cause: str | None = None
    ) -> Event:
        event = Event(event_id, "r1", at, payload, causation_id=cause)
        self.store.apply([(Position(RUNS_TOPIC, 0, self.offset), event)])
        self.offset += 1
        return event


@pytest.fixture
def log(tmp_path) -> Iterator[Log]:
    with SqliteReadModels.open(tmp_path / "rm.db") as store:
        feed = Log(store)
        feed.add("submitted", RunSubmitted("r1", DEFINITION, {}, ["hitl"]))
        yield feed


def _task(config: dict[str, Any], attempt: int = 1) -> NodeScheduled:
    return NodeScheduled("r1", "gate", "hitl", 0, attempt, config, {})


def _request(approval_id: str = "a1", deadline: int | None = 5_000) -> ApprovalRequested:
    return ApprovalRequested("r1", approval_id, "gate", 0, "Go?", deadline=deadline)


def test_the_request_records_the_attempt_and_timeout_meaning_of_its_task(log):
    log.add("task", _task({"timeout_ms": 4_000, "on_timeout": "fail"}, attempt=2))
    log.add("asked", _request(), cause="task")
    approval = log.store.get_approval("a1")
    assert (approval["attempt"], approval["on_timeout"], approval["deadline"]) == (2, "fail", 5_000)
    assert approval["status"] == "pending"
    assert log.store.get_run("r1")["status"] == "waiting"


def test_a_timeout_means_reject_unless_configured(log):
    log.add("task", _task({"timeout_ms": 4_000}))
    log.add("asked", _request(), cause="task")
    assert log.store.get_approval("a1")["on_timeout"] == "reject"


def test_the_first_decision_wins_and_keeps_its_event_id(log):
    log.add("task", _task({}))
    log.add("asked", _request(), cause="task")
    log.add("d1", ApprovalDecided("r1", "a1", "fail", "system:timeout", "late"), at=6_000)
    log.add("d2", ApprovalDecided("r1", "a1", "approve", "alice"), at=6_001)
    approval = log.store.get_approval("a1")
    assert {k: approval[k] for k in ("status", "decision", "decided_by", "decision_event_id")} == {
        "status": "rejected",  # anything but an approval reads as a rejection
        "decision": "fail",
        "decided_by": "system:timeout",
        "decision_event_id": "d1",
    }
    assert approval["decided_at"] == 6_000
    assert log.store.get_run("r1")["status"] == "running"


def test_a_request_after_the_run_ended_lands_cancelled(log):
    log.add("cancelled", RunCancelled("r1", "stop"))
    log.add("task", _task({}))
    log.add("asked", _request(), at=2_000, cause="task")
    approval = log.store.get_approval("a1")
    assert (approval["status"], approval["decided_at"]) == ("cancelled", 2_000)
    assert log.store.list_approvals(status="pending") == []
    assert log.store.get_run("r1")["status"] == "cancelled"


def test_a_request_without_its_task_in_the_log_still_lands(log):
    log.add("asked", _request(deadline=None))
    approval = log.store.get_approval("a1")
    assert (approval["status"], approval["attempt"], approval["on_timeout"]) == (
        "pending",
        None,
        None,
    )
