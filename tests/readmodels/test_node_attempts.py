"""A node attempt scheduled, started and completed in one batch is written in one
statement (`sqlite.NodeAttempts`): the tables come out as the statements one by one
leave them, whatever rows were there before, and fewer statements run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aob.events.types import (
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeStarted,
    RunCompleted,
    RunSubmitted,
)
from aob.projections.readmodels.sqlite import SqliteReadModels
from tests.readmodels.conftest import Script

DAG = {"name": "one", "nodes": [{"id": "a", "type": "noop"}]}


def scheduled(attempt: int) -> NodeScheduled:
    return NodeScheduled("r", "a", "noop", 0, attempt, {}, {"inputs": {}}, 5_000)


def applied(tmp_path: Path, name: str, script: Script, cuts: list[int]) -> dict[str, Any]:
    """The store's dump after applying `script` in batches cut at `cuts` (item counts)."""
    store = SqliteReadModels.open(tmp_path / f"{name}.db")
    start = 0
    for end in [*cuts, len(script.items)]:
        store.apply(script.items[start:end])
        start = end
    dump = store.dump()
    store.close()
    return dump


def one_by_one(script: Script) -> list[int]:
    return list(range(1, len(script.items)))


def test_an_attempt_in_one_batch_is_written_once_as_one_by_one(tmp_path: Path) -> None:
    s = Script()
    s.add("r", 1, RunSubmitted("r", DAG, {}, ["noop"]))
    s.add("r", 2, scheduled(1))
    s.add("r", 3, NodeStarted("r", "a", 0, 1, "inline"))
    s.add("r", 4, NodeCompleted("r", "a", 0, 1, {"v": 1}))
    s.add("r", 5, RunCompleted("r", {"v": 1}))
    whole = applied(tmp_path, "whole", s, [])
    single = applied(tmp_path, "single", s, one_by_one(s))
    assert whole == single
    (node,) = whole["node_runs"]
    assert (node[4], node[6], node[7]) == ("completed", "inline", {"v": 1})
    # The schedule, start and completion in one statement, then the run end's cancel.
    assert _node_statements(tmp_path, s) == 2


def _node_statements(tmp_path: Path, script: Script) -> int:
    """How many statements naming node_runs applying `script` in one batch ran."""
    store = SqliteReadModels.open(tmp_path / "count.db")
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    store.apply(script.items)
    store.close()
    return sum(1 for sql in seen if "node_runs" in sql)


def test_a_later_attempt_holding_the_row_is_left_as_the_updates_leave_it(tmp_path: Path) -> None:
    s = Script()
    s.add("r", 1, RunSubmitted("r", DAG, {}, ["noop"]))
    s.add("r", 2, scheduled(2))
    s.add("r", 3, NodeStarted("r", "a", 0, 2, "w2"))
    first = len(s.items)
    # Late events of attempt 1, one batch: the schedule does not take (attempt 2 holds
    # the row), and its updates do not match the row either.
    s.add("r", 4, scheduled(1))
    s.add("r", 5, NodeStarted("r", "a", 0, 1, "w1"))
    s.add("r", 6, NodeCompleted("r", "a", 0, 1, {"late": True}))
    batched = applied(tmp_path, "batched", s, [first])
    single = applied(tmp_path, "single", s, one_by_one(s))
    assert batched == single
    (node,) = batched["node_runs"]
    assert (node[4], node[5], node[6]) == ("running", 2, "w2")


def test_an_attempt_already_scheduled_takes_the_updates_that_follow(tmp_path: Path) -> None:
    """The same attempt scheduled again (another event id): the upsert does not take,
    and the start and completion then apply to the row already there."""
    s = Script()
    s.add("r", 1, RunSubmitted("r", DAG, {}, ["noop"]))
    s.add("r", 2, scheduled(1))
    first = len(s.items)
    s.add("r", 3, scheduled(1))
    s.add("r", 4, NodeStarted("r", "a", 0, 1, "w1"))
    s.add("r", 5, NodeCompleted("r", "a", 0, 1, {"v": 2}))
    batched = applied(tmp_path, "batched", s, [first])
    single = applied(tmp_path, "single", s, one_by_one(s))
    assert batched == single
    (node,) = batched["node_runs"]
    assert (node[4], node[6], node[7]) == ("completed", "w1", {"v": 2})


def test_other_node_statements_find_the_attempt_written_first(tmp_path: Path) -> None:
    """A failure and a retry in the same batch as the schedule: each finds the row the
    statements before it left."""
    s = Script()
    s.add("r", 1, RunSubmitted("r", DAG, {}, ["noop"]))
    s.add("r", 2, scheduled(1))
    s.add("r", 3, NodeStarted("r", "a", 0, 1, "w1"))
    s.add("r", 4, NodeFailed("r", "a", 0, 1, "boom", retryable=True))
    s.add("r", 5, scheduled(2))
    s.add("r", 6, NodeStarted("r", "a", 0, 2, "w2"))
    s.add("r", 7, NodeCompleted("r", "a", 0, 2, {"v": 3}))
    s.add("r", 8, RunCompleted("r", {"v": 3}))
    whole = applied(tmp_path, "whole", s, [])
    single = applied(tmp_path, "single", s, one_by_one(s))
    assert whole == single
    (node,) = whole["node_runs"]
    assert (node[4], node[5], node[6]) == ("completed", 2, "w2")
