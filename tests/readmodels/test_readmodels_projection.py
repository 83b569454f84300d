"""The projector side: states as events arrive, idempotency, rebuilds, atomicity."""

from __future__ import annotations

import itertools
import logging
import sqlite3
from typing import Any

import pytest

from aob.events.log.port import Record, TopicPartition
from aob.events.types import (
    RUNS_TOPIC,
    WORKFLOWS_TOPIC,
    Event,
    PatchApplied,
    PatchProposed,
    Payload,
    RunSubmitted,
    WorkflowCreated,
)
from aob.projections.readmodels import Position
from aob.projections.readmodels.sqlite import migrations


def _node(store, run_id: str, node_id: str) -> dict[str, Any]:
    run = store.get_run(run_id)
    assert run is not None
    return next(n for n in run["nodes"] if n["node_id"] == node_id)


def _status(store, run_id: str) -> str:
    run = store.get_run(run_id)
    assert run is not None
    return str(run["status"])


def test_failed_node_with_retry_timer_is_retrying_until_rescheduled(store, script):
    store.apply(script.until("r1_retrying"))
    fetch = _node(store, "r1", "fetch")
    assert (fetch["status"], fetch["attempt"], fetch["error"]) == (
        "retrying",
        1,
        "connection reset",
    )
    assert fetch["finished_at"] == 10_020

    store.apply(script.until("r1_rescheduled"))
    fetch = _node(store, "r1", "fetch")
    assert (fetch["status"], fetch["attempt"], fetch["error"]) == ("scheduled", 2, None)
    assert (fetch["scheduled_at"], fetch["started_at"], fetch["worker"]) == (11_021, None, None)


def test_pending_patch_and_approval_make_the_run_wait(store, script):
    store.apply(script.until("r1_retrying"))
    assert _status(store, "r1") == "running"
    store.apply(script.until("r1_patch_proposed"))
    assert _status(store, "r1") == "waiting"
    store.apply(script.until("r1_patch_applied"))
    assert _status(store, "r1") == "running"
    store.apply(script.until("r1_approval_pending"))
    assert _status(store, "r1") == "waiting"
    assert [a["approval_id"] for a in store.list_approvals(status="pending")] == ["a1"]
    store.apply(script.items)
    assert _status(store, "r1") == "completed"
    assert store.list_approvals(status="pending") == []


def test_applied_patch_materializes_the_definition(store, script):
    store.apply(script.until("r1_patch_applied"))
    run = store.get_run("r1")
    assert run is not None
    assert run["revision"] == 1
    assert run["definition"]["nodes"][-1] == {"id": "review", "type": "approval"}
    assert run["definition"]["edges"][-1] == {"source": "fetch", "target": "review"}
    assert len(run["definition"]["nodes"]) == 4


def test_run_end_deletes_unfired_timers_and_cancels_pending_approvals(store, script):
    store.apply(script.until("r2_before_cancel"))
    assert [t["timer_id"] for t in store.due_timers(30_000) if t["run_id"] == "r2"] == [
        "r2/fetch/0/1/timeout"
    ]
    assert store.get_approval("a2")["status"] == "pending"

    store.apply(script.items)
    assert [t for t in store.due_timers(10**12) if t["run_id"] in ("r1", "r2")] == []
    r1_timers = [row for row in store.dump()["timers"] if row[1] == "r1"]
    assert [(row[0], bool(row[7])) for row in r1_timers] == [("r1/fetch/0/1/retry", True)]
    a2 = store.get_approval("a2")
    assert (a2["status"], a2["decided_at"]) == ("cancelled", 20_011)
    run = store.get_run("r2")
    assert (run["status"], run["error"], run["finished_at"]) == (
        "cancelled",
        "no longer needed",
        20_011,
    )


def test_a_patch_that_cannot_be_replayed_keeps_the_definition(store, caplog):
    """A bug signal, logged; it must not stall the projection of every other run."""
    batch: list[Payload] = [
        RunSubmitted("r", {"nodes": []}, {}, []),
        PatchProposed("r", "p", [{"op": "remove", "path": "/missing"}]),
        PatchApplied("r", "p", 1),
    ]
    events = [Event(f"e{i}", "r", i, p) for i, p in enumerate(batch)]
    with caplog.at_level(logging.ERROR):
        store.apply([(Position(RUNS_TOPIC, 0, i), e) for i, e in enumerate(events)])
    run = store.get_run("r")
    assert (run["definition"], run["revision"], run["status"]) == ({"nodes": []}, 1, "running")
    assert store.get_patch("r", "p")["status"] == "applied"
    assert "cannot replay patch p on run r" in caplog.text


def test_offsets_are_the_next_offset_per_partition(store, script):
    store.apply(script.items)
    expected: dict[TopicPartition, int] = {}
    for position, _ in script.items:
        expected[TopicPartition(position.topic, position.partition)] = position.offset + 1
    assert store.offsets() == expected


def test_applying_a_batch_twice_changes_nothing(store, script):
    store.apply(script.items)
    before = store.dump()
    store.apply(script.items)
    store.apply(script.items[5:20])
    assert store.dump() == before


def test_overlapping_batches_apply_each_event_once(store, script):
    items = script.items
    store.apply(items[:20])
    store.apply(items[10:40])
    store.apply(items[30:])
    assert len(store.dump()["timeline"]) == len(items)


@pytest.mark.parametrize("size", [1, 3, 7])
def test_rebuild_in_small_batches_gives_the_same_tables(open_store, script, size):
    whole = open_store("whole.db")
    whole.apply(script.items)
    pieces = open_store(f"pieces-{size}.db")
    for start in range(0, len(script.items), size):
        pieces.apply(script.items[start : start + size])
    assert pieces.dump() == whole.dump()


def test_rebuild_with_partitions_interleaved_differently_gives_the_same_tables(open_store, script):
    """Only per-partition order is guaranteed; a consumer may interleave partitions."""
    by_partition: dict[tuple[str, int], list[Any]] = {}
    for position, event in script.items:
        by_partition.setdefault((position.topic, position.partition), []).append((position, event))
    interleaved = [
        item
        for group in itertools.zip_longest(*reversed(by_partition.values()))
        for item in group
        if item is not None
    ]
    assert interleaved != script.items
    whole = open_store("whole.db")
    whole.apply(script.items)
    other = open_store("interleaved.db")
    other.apply(interleaved)
    assert other.dump() == whole.dump()


def test_a_redelivered_event_id_at_a_new_offset_is_ignored(store, script):
    """Re-applying the old TagMoved would move `prod` back to version 1."""
    old_move = next(e for _, e in script.items if e.type == "TagMoved")
    script.append(old_move)
    store.apply(script.items)
    assert store.get_tag("prod")["version"] == 2
    assert len(store.timeline("prod")) == 2
    last_position = script.items[-1][0]
    tp = TopicPartition(last_position.topic, last_position.partition)
    assert store.offsets()[tp] == last_position.offset + 1


def test_a_failing_batch_leaves_tables_and_offsets_untouched(store, script):
    store.apply(script.items[:10])
    before = store.dump()
    poison = Event("bad", "r9", 50_000, RunSubmitted("r9", {}, object(), []))
    batch = [*script.items[10:], (Position(RUNS_TOPIC, 0, 10_000), poison)]
    with pytest.raises(TypeError):
        store.apply(batch)
    assert store.dump() == before


def test_record_positions_are_accepted(store):
    created = WorkflowCreated("wf", 1, {"name": "wf"})
    record = Record(WORKFLOWS_TOPIC, 2, 7, "wf", b"", 123)
    store.apply([(record, Event("e1", "wf", 1, created))])
    assert store.offsets() == {TopicPartition(WORKFLOWS_TOPIC, 2): 8}
    assert store.get_workflow("wf")["name"] == "wf"


def test_opening_twice_migrates_once(open_sqlite_store, tmp_path):
    open_sqlite_store("same.db").close()
    open_sqlite_store("same.db").close()
    conn = sqlite3.connect(tmp_path / "same.db")
    try:
        rows = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    shipped = [
        (1, "0001_init.sql"),
        (2, "0002_approval_outcomes.sql"),
        (3, "0003_patch_reviews.sql"),
        (4, "0004_run_tenants.sql"),
        (5, "0005_workflow_tenants.sql"),
        (6, "0006_node_states.sql"),
        (7, "0007_llm_usage.sql"),
        (16, "0016_approval_votes.sql"),
    ]
    assert rows == shipped
    assert journal == "wal"
    assert [m[:2] for m in migrations()] == shipped


def test_an_empty_batch_is_a_no_op(store):
    store.apply([])
    assert store.offsets() == {}
