"""list_runs' submission-time window (`since`/`until`, epoch ms), on every engine."""

from __future__ import annotations

from aob.events.types import RUNS_TOPIC, Event, RunCompleted, RunSubmitted
from aob.projections.readmodels import Position

# run id -> submitted_at (ms); "c" and "d" tie at 300.
TIMES = {"a": 100, "b": 200, "c": 300, "d": 300, "e": 400, "f": 500}


def _seed(store) -> None:
    batch = []
    for offset, (run_id, at) in enumerate(TIMES.items()):
        submitted = RunSubmitted(run_id, {}, {}, [], "wf" if run_id in "bcf" else "other")
        batch.append((Position(RUNS_TOPIC, 0, offset), Event(f"e-{run_id}", run_id, at, submitted)))
    done = Event("e-done", "c", 900, RunCompleted("c", None))
    store.apply([*batch, (Position(RUNS_TOPIC, 0, len(batch)), done)])


def _ids(store, **filters) -> list[str]:
    return [r["run_id"] for r in store.list_runs(limit=100, **filters)[0]]


def test_since_is_inclusive_and_until_exclusive(store):
    _seed(store)
    assert _ids(store, since=300) == ["f", "e", "d", "c"]
    assert _ids(store, until=300) == ["b", "a"]
    assert _ids(store, since=200, until=400) == ["d", "c", "b"]
    # Consecutive windows split the runs without counting one twice.
    newer, older = _ids(store, since=300, until=600), _ids(store, since=100, until=300)
    assert newer + older == ["f", "e", "d", "c", "b", "a"]
    assert _ids(store, since=401, until=500) == []
    assert _ids(store, since=500, until=500) == []


def test_the_window_combines_with_the_other_filters_and_pages(store):
    _seed(store)
    assert _ids(store, since=200, workflow_id="wf") == ["f", "c", "b"]
    assert _ids(store, until=400, status="completed") == ["c"]
    assert _ids(store, since=300, status="running") == ["f", "e", "d"]
    assert _ids(store, since=0, tenant="nobody") == []
    # The window holds across pages: the cursor continues inside it.
    items, cursor = store.list_runs(limit=2, since=200, until=500)
    assert [r["run_id"] for r in items] == ["e", "d"]
    items, cursor = store.list_runs(limit=2, since=200, until=500, before=cursor)
    assert [r["run_id"] for r in items] == ["c", "b"]
    assert cursor is None


def test_an_empty_window_is_not_an_error(store):
    _seed(store)
    assert store.list_runs(since=1_000, limit=5) == ([], None)
    assert store.list_runs(until=-1, limit=5) == ([], None)
