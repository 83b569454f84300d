"""Golden run histories (issue 14): recorded runs replayed through the current fold.

tests/coordinator/golden_runs/ holds a few dozen real runs of the fold (joins, dead
paths, conditions, loops, retries, timeouts, approvals, patches, cancel, forks,
expressions, blob refs, an unreliable world), one log per file. Each is replayed:
its inputs are fed to the fold in order, and the fold must emit exactly the recorded
fold events (same ids, payloads and order). A change that alters recorded behaviour
fails here, naming the run and the first event that differs; if it is meant,
regenerate with `python -m tests.coordinator.golden_runs.generate --force` and review
the diff.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aob.events.types import LoopExhausted, NodeStarted, Payload, RunCompleted
from aob.projections.coordinator import fold as fold_module
from tests.coordinator.golden_runs.generate import SCENARIOS
from tests.coordinator.golden_runs.history import GoldenRun, golden_files, replay

REPO = Path(__file__).resolve().parents[2]
FILES = golden_files()


def test_every_scenario_has_its_recorded_history_and_there_are_a_few_dozen() -> None:
    assert {path.stem for path in FILES} == set(SCENARIOS)
    assert len(FILES) >= 30


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_the_current_fold_emits_exactly_the_recorded_events(path: Path) -> None:
    run = GoldenRun.load(path)
    assert any(event["actor"] == "coordinator" for event in run.events)
    mismatch = replay(run)
    assert mismatch is None, str(mismatch)


def test_the_histories_cover_what_issue_14_lists() -> None:
    types: dict[str, set[str]] = {}
    for path in FILES:
        run = GoldenRun.load(path)
        types[run.name] = {event["type"] for event in run.events}
    seen = set().union(*types.values())
    for kind in (
        "NodeSkipped",
        "LoopExhausted",
        "TimerSet",
        "TimerFired",
        "ApprovalRequested",
        "ApprovalDecided",
        "PatchApplied",
        "PatchRejected",
        "PatchReviewRequested",
        "PatchReviewed",
        "RunCancelled",
        "ExpressionRequested",
        "ExpressionEvaluated",
        "RunCompleted",
        "RunFailed",
    ):
        assert kind in seen, kind
    deadline = GoldenRun.load(_file("approval-deadline")).events
    assert any(
        e["type"] == "ApprovalDecided" and e["data"]["decided_by"] == "system:timeout"
        for e in deadline
    )
    fork = GoldenRun.load(_file("fork-from-checkpoint")).events
    assert fork[0]["data"]["checkpoint"]["outputs"] == {"a": "A", "b": "B"}
    blobs = GoldenRun.load(_file("blob-refs")).events
    assert any(e["type"] == "NodeCompleted" and e["data"]["output_ref"] for e in blobs)


def test_a_changed_reason_string_fails_naming_the_run_and_the_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check works: a fold whose retry reason changed no longer matches."""
    monkeypatch.setattr(fold_module, "_not_retried", lambda failure, max_attempts: "changed reason")
    mismatch = replay(GoldenRun.load(_file("retries-exhausted")))
    assert mismatch is not None
    message = str(mismatch)
    assert message.startswith("golden run 'retries-exhausted', event #")
    assert "RunFailed" in message
    assert "differs at .data.error" in message
    assert "(not retried: all 3 attempts of its retry.max_attempts used)" in message
    assert "changed reason" in message
    recorded_failure = next(
        i
        for i, e in enumerate(GoldenRun.load(_file("retries-exhausted")).events)
        if e["type"] == "RunFailed"
    )
    assert mismatch.position == recorded_failure


def test_an_event_the_fold_stops_emitting_or_starts_emitting_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = fold_module._Step.emit

    def without_warnings(step: fold_module._Step, payload: object) -> None:
        if not isinstance(payload, LoopExhausted):
            original(step, payload)  # type: ignore[arg-type]

    monkeypatch.setattr(fold_module._Step, "emit", without_warnings)
    mismatch = replay(GoldenRun.load(_file("loop-exhausted")))
    assert mismatch is not None
    assert mismatch.recorded is not None
    assert mismatch.recorded["type"] == "LoopExhausted"  # the next event took its id
    assert 'differs at .type: recorded "LoopExhausted"' in str(mismatch)

    def without_completion(step: fold_module._Step, payload: object) -> None:
        if not isinstance(payload, RunCompleted):
            original(step, payload)  # type: ignore[arg-type]

    monkeypatch.setattr(fold_module._Step, "emit", without_completion)
    mismatch = replay(GoldenRun.load(_file("linear-chain")))
    assert mismatch is not None
    assert mismatch.emitted is None
    assert "records RunCompleted" in str(mismatch)
    assert "which the fold no longer emits" in str(mismatch)

    original_apply = fold_module._Step._apply

    def chatty(step: fold_module._Step, payload: Payload) -> None:
        original_apply(step, payload)
        if isinstance(payload, NodeStarted):  # which never led to an event before
            original(step, LoopExhausted(payload.run_id, "x", "x", 0))

    monkeypatch.setattr(fold_module._Step, "emit", original)
    monkeypatch.setattr(fold_module._Step, "_apply", chatty)
    mismatch = replay(GoldenRun.load(_file("linear-chain")))
    assert mismatch is not None
    assert mismatch.recorded is None
    assert "the fold now emits LoopExhausted" in str(mismatch)
    assert "which the history does not record" in str(mismatch)


def test_the_generator_refuses_to_overwrite_without_force() -> None:
    before = {path.name: path.read_bytes() for path in FILES}
    done = subprocess.run(
        [sys.executable, "-m", "tests.coordinator.golden_runs.generate"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "pass --force" in done.stderr
    assert {path.name: path.read_bytes() for path in golden_files()} == before


def test_the_files_are_readable_json_one_event_per_line() -> None:
    text = _file("linear-chain").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith('{"name": "linear-chain"')
    data = json.loads(text)
    assert len(lines) == len(data["events"]) + 2


def _file(name: str) -> Path:
    return next(path for path in FILES if path.stem == name)
