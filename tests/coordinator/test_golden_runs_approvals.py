"""Golden runs of approvals that organisations need (issue 16): a quorum with a
duplicate vote, an escalation, a signal sent before its wait, and a person's decision
racing a signal. Each is replayed by test_golden_runs.py; these tests show the
histories hold those events and that a fold which changes their handling fails."""

from __future__ import annotations

from typing import Any

import pytest

from aob.projections.coordinator import approvals
from tests.coordinator.golden_runs.history import RACED, GoldenRun, golden_files, replay


def _run(name: str) -> GoldenRun:
    [path] = [path for path in golden_files() if path.stem == name]
    return GoldenRun.load(path)


def _events(name: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in _run(name).events if e["type"] == kind]


def test_the_histories_hold_votes_escalations_and_signals() -> None:
    votes = [
        (e["data"]["voter"], e["data"]["decision"])
        for e in _events("approval-quorum", "ApprovalVoted")
    ]
    assert votes == [("ann", "approve"), ("ann", "reject"), ("bob", "approve"), ("cy", "reject")]
    [quorum] = _events("approval-quorum", "ApprovalDecided")
    assert quorum["data"]["decided_by"] == "system:quorum"
    assert [v["voter"] for v in quorum["data"]["votes"]] == ["ann", "bob"]

    [escalated] = _events("approval-escalated", "ApprovalEscalated")
    assert (escalated["data"]["level"], escalated["actor"]) == (1, "coordinator")
    [timeout] = _events("approval-escalated", "ApprovalDecided")
    assert timeout["data"]["decided_by"] == "system:timeout"

    [lookback] = _events("approval-signal-lookback", "ApprovalDecided")
    [signal] = _events("approval-signal-lookback", "SignalReceived")
    [requested] = _events("approval-signal-lookback", "ApprovalRequested")
    assert lookback["data"]["signal"]["event_id"] == signal["id"]
    assert lookback["causation"] == requested["id"]  # ended as soon as it was asked for

    race = _run("approval-signal-race").events
    [raced] = [e for e in race if e.get(RACED)]
    assert (raced["type"], raced["actor"]) == ("ApprovalDecided", "alice")
    gates = [
        e["data"]["output"]
        for e in _events("approval-signal-race", "NodeCompleted")
        if e["data"]["node_id"] == "gate"
    ]
    first, second = gates
    assert (first["won"], first["decided_by"]) == (
        "approval",
        "alice",
    )
    assert second["signal"]["payload"] == {"n": 2}  # not the used one


def test_a_fold_without_the_lookback_fails_the_signal_lookback_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(approvals, "on_requested", lambda step, request: None)
    mismatch = replay(_run("approval-signal-lookback"))
    assert mismatch is not None
    assert mismatch.recorded is not None
    assert mismatch.recorded["type"] == "ApprovalDecided"


def test_a_fold_that_returns_a_signal_whose_decision_lost_fails_the_race_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = approvals._hitl

    def forgetful(state: Any, part: str) -> Any:
        return {} if part == "used" else original(state, part)  # nothing stays used

    monkeypatch.setattr(approvals, "_hitl", forgetful)
    mismatch = replay(_run("approval-signal-race"))
    assert mismatch is not None
    assert "approval-gate-1-1" in str(mismatch)  # iteration 1 ended by the first signal
