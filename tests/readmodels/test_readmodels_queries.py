"""The query side, over the hand-built histories in conftest.py."""

from __future__ import annotations

import json

import pytest

from aob.events.types import (
    RUNS_TOPIC,
    Event,
    NodeScheduled,
    NodeStarted,
    RunCompleted,
    RunSubmitted,
)
from aob.projections.readmodels import Position
from aob.projections.readmodels.queries import encode_cursor
from tests.readmodels.conftest import Script


@pytest.fixture
def full(store, script):
    store.apply(script.items)
    return store


def test_get_run_has_the_run_and_its_nodes(full):
    run = full.get_run("r1")
    assert run is not None
    assert {k: run[k] for k in ("workflow_id", "version", "tag", "status", "revision")} == {
        "workflow_id": "review",
        "version": 2,
        "tag": "prod",
        "status": "completed",
        "revision": 1,
    }
    assert run["inputs"] == {"url": "https://example.org"}
    assert run["output"] == {"summary": "hi"}
    assert (run["submitted_at"], run["updated_at"], run["finished_at"]) == (10_000, 12_002, 12_002)
    assert (run["submitted_by"], run["trace_id"], run["error"]) == ("alice", "trace-r1", None)
    assert [(n["node_id"], n["status"]) for n in run["nodes"]] == [
        ("legacy", "skipped"),
        ("fetch", "completed"),
        ("review", "completed"),
        ("summarize", "completed"),
    ]
    json.dumps(run)  # JSON-ready


def test_node_fields(full):
    legacy, fetch, _, summarize = full.get_run("r1")["nodes"]
    assert legacy["warning"] is True
    assert legacy["skip_reason"] == "unknown node type 'cobol'"
    assert (legacy["type"], legacy["attempt"], legacy["scheduled_at"]) == (None, 0, None)
    assert fetch["warning"] is False
    assert (fetch["type"], fetch["attempt"], fetch["worker"]) == ("http", 2, "w2")
    assert fetch["output"] == {"status": 200, "body": "hello"}
    assert (fetch["started_at"], fetch["finished_at"], fetch["error"]) == (11_030, 11_040, None)
    assert summarize["output"] == {"summary": "hi"}


def test_failed_and_unknown_runs(full):
    r3 = full.get_run("r3")
    assert (r3["status"], r3["error"], r3["error_node_id"]) == (
        "failed",
        "node load failed: syntax error",
        "load",
    )
    assert r3["nodes"][0]["status"] == "failed"
    assert full.get_run("nope") is None


def test_a_run_summary_is_the_run_as_lists_show_it(full):
    summary = full.run_summary("r1")
    page, _ = full.list_runs(workflow_id="review")
    assert summary == next(row for row in page if row["run_id"] == "r1")
    run = full.get_run("r1")
    assert summary == {k: v for k, v in run.items() if k not in ("definition", "nodes")}
    assert full.run_summary("r3")["status"] == "failed"
    assert full.run_summary("nope") is None


def test_list_runs_filters_newest_first(full):
    items, cursor = full.list_runs()
    assert [r["run_id"] for r in items] == ["r4", "r3", "r2", "r1"]
    assert cursor is None
    assert "definition" not in items[0]
    assert [r["run_id"] for r in full.list_runs(workflow_id="review")[0]] == ["r2", "r1"]
    assert [r["run_id"] for r in full.list_runs(status="running")[0]] == ["r4"]
    assert full.list_runs(status="failed", workflow_id="review")[0] == []


def test_list_runs_pages_through_ties_without_gaps(store):
    times = {"a": 100, "b": 200, "c": 200, "d": 200, "e": 300, "f": 400, "g": 400}
    batch = []
    for offset, (run_id, at) in enumerate(times.items()):
        submitted = RunSubmitted(run_id, {}, {}, [], "wf" if run_id < "d" else "other")
        batch.append((Position(RUNS_TOPIC, 0, offset), Event(f"e-{run_id}", run_id, at, submitted)))
    done = Event("e-done", "c", 500, RunCompleted("c", None))
    store.apply([*batch, (Position(RUNS_TOPIC, 0, len(batch)), done)])

    seen, cursor = [], None
    while True:
        items, cursor = store.list_runs(limit=3, before=cursor)
        seen.append([r["run_id"] for r in items])
        if cursor is None:
            break
    assert seen == [["g", "f", "e"], ["d", "c", "b"], ["a"]]

    items, cursor = store.list_runs(workflow_id="wf", limit=2)
    assert [r["run_id"] for r in items] == ["c", "b"]
    items, cursor = store.list_runs(workflow_id="wf", limit=2, before=cursor)
    assert ([r["run_id"] for r in items], cursor) == (["a"], None)
    assert [r["run_id"] for r in store.list_runs(status="running", limit=10)[0]] == [*"gfedba"]
    assert store.list_runs(before=encode_cursor(200, "c"))[0][0]["run_id"] == "b"


@pytest.mark.parametrize("cursor", ["", "not base64!", encode_cursor(1, "x")[:-2], "WzFd"])
def test_list_runs_rejects_a_bad_cursor(store, cursor):
    with pytest.raises(ValueError, match="cursor"):
        store.list_runs(before=cursor)


def test_list_runs_rejects_a_non_positive_limit(store):
    with pytest.raises(ValueError, match="limit"):
        store.list_runs(limit=0)


def test_timeline_is_per_key_in_log_order(full, script):
    r1 = [(p, e) for p, e in script.items if e.key == "r1"]
    timeline = full.timeline("r1")
    assert [t["event_id"] for t in timeline] == [e.event_id for _, e in r1]
    assert [t["offset"] for t in timeline] == sorted(t["offset"] for t in timeline)
    first = timeline[0]
    assert (first["type"], first["topic"], first["actor"]) == ("RunSubmitted", RUNS_TOPIC, "alice")
    assert first["data"]["inputs"] == {"url": "https://example.org"}
    assert first["data"]["known_types"] == ["http", "llm", "approval"]
    assert (first["trace_id"], first["causation_id"], first["occurred_at"]) == (
        "trace-r1",
        None,
        10_000,
    )
    after = full.timeline("r1", after_offset=timeline[4]["offset"], limit=3)
    assert after == timeline[5:8]
    assert [t["type"] for t in full.timeline("prod")] == ["TagMoved", "TagMoved"]
    assert full.timeline("nope") == []


def test_workflows_and_tags(full):
    latest = full.get_workflow("review")
    assert (latest["version"], latest["name"], latest["created_by"]) == (2, "review", "alice")
    assert latest["definition"]["nodes"][1]["id"] == "legacy"
    assert full.get_workflow("review", 1)["created_at"] == 1_000
    assert full.get_workflow("review", 3) is None
    assert full.get_workflow("nope") is None
    assert [(w["workflow_id"], w["version"], w["versions"]) for w in full.list_workflows()] == [
        ("ingest", 1, 1),
        ("review", 2, 2),
    ]
    assert full.get_tag("prod") == {
        "tag": "prod",
        "workflow_id": "review",
        "version": 2,
        "moved_at": 2_500,
        "moved_by": "bob",
        "tenant": "default",  # written before tenants existed
    }
    assert full.list_tags() == [full.get_tag("prod")]
    assert full.list_tags("acme") == []
    assert full.list_workflows("acme") == []
    assert full.get_tag("nope") is None


def test_patches(full):
    p1, p2 = full.list_patches("r1")
    assert (p1["patch_id"], p1["status"], p1["revision"], p1["added_nodes"]) == (
        "p1",
        "applied",
        1,
        ["review"],
    )
    assert (p1["operations"], p1["reason"]) == (
        full.get_patch("r1", "p1")["operations"],
        "needs a human",
    )
    assert (p1["proposed_at"], p1["decided_at"], p1["reasons"]) == (11_050, 11_060, None)
    assert (p2["status"], p2["reasons"], p2["revision"]) == (
        "rejected",
        ["node fetch already completed"],
        None,
    )
    assert full.get_patch("r1", "nope") is None
    assert full.list_patches("r2") == []


def test_approvals(full):
    a1 = full.get_approval("a1")
    assert {k: a1[k] for k in ("status", "decided_by", "comments", "decided_at")} == {
        "status": "approved",
        "decided_by": "bob",
        "comments": "ship it",
        "decided_at": 12_000,
    }
    assert (a1["payload"], a1["approvers"], a1["deadline"]) == ({"draft": "hi"}, ["bob"], 90_000)
    assert (a1["node_id"], a1["iteration"], a1["message"]) == ("review", 0, "Publish?")
    assert [a["approval_id"] for a in full.list_approvals()] == ["a1", "a2"]
    assert [a["approval_id"] for a in full.list_approvals(run_id="r2")] == ["a2"]
    assert full.list_approvals(run_id="r1", status="cancelled") == []
    assert full.get_approval("nope") is None


def test_due_timers(full):
    assert full.due_timers(41_001) == []
    assert full.due_timers(41_002) == [
        {
            "timer_id": "r4/wait/0/1/retry",
            "run_id": "r4",
            "fire_at": 41_002,
            "purpose": "retry",
            "node_id": "wait",
            "iteration": 0,
            "attempt": 1,
            "fired": False,
        }
    ]


def test_due_timers_are_earliest_first_and_limited(store, script):
    store.apply(script.until("r1_approval_pending"))
    due = store.due_timers(10**12)
    assert [t["timer_id"] for t in due] == ["r1/fetch/0/1/timeout", "r1/summarize/0/1/timeout"]
    assert store.due_timers(10**12, limit=1) == due[:1]
    assert store.due_timers(15_009) == []


def test_each_run_of_a_batch_is_touched_with_its_own_latest_event_time(store):
    """Runs' updated_at is written for the whole batch at once: each gets the latest
    time of its own events, and an older event applied later moves it back for none."""
    s = Script()
    dag = {"name": "w", "nodes": [{"id": "a", "type": "noop"}]}
    for n, run_id in enumerate(["t1", "t2", "t3"]):
        s.add(run_id, 1_000 + n, RunSubmitted(run_id, dag, {}, ["noop"]))
    s.add("t1", 5_000, NodeScheduled("t1", "a", "noop", 0, 1, {}, {}, 1))
    s.add("t2", 3_000, NodeScheduled("t2", "a", "noop", 0, 1, {}, {}, 1))
    s.add("t1", 4_000, NodeStarted("t1", "a", 0, 1, "w"))  # older than t1's latest
    s.mark("first")
    s.add("t2", 2_000, NodeStarted("t2", "a", 0, 1, "w"))  # older, in a later batch
    store.apply(s.until("first"))
    store.apply(s.items[len(s.until("first")) :])
    assert [store.get_run(r)["updated_at"] for r in ("t1", "t2", "t3")] == [5_000, 3_000, 1_002]
