"""A node attempt scheduled, started and completed in one batch is written as one row
of one statement (`views.NodeAttempts`): on every engine the tables come out as the
statements one by one leave them, whatever rows were there before, and fewer
statements run (counted on SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aob.events.types import (
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeStarted,
    Payload,
    RunCompleted,
    RunSubmitted,
)
from aob.projections.readmodels.sqlite import SqliteReadModels
from tests.readmodels.conftest import OpenStore, Script

DAG = {"name": "one", "nodes": [{"id": "a", "type": "noop"}]}
SUBMITTED = RunSubmitted("r", DAG, {}, ["noop"])


def scheduled(attempt: int) -> NodeScheduled:
    return NodeScheduled("r", "a", "noop", 0, attempt, {}, {"inputs": {}}, 5_000)


def script(*payloads: Payload) -> Script:
    """Run r's events, one millisecond apart."""
    s = Script()
    for at, payload in enumerate(payloads, start=1):
        s.add("r", at, payload)
    return s


def applied(open_store: OpenStore, name: str, s: Script, cuts: list[int]) -> dict[str, Any]:
    """The store's dump after applying `s` in batches cut at `cuts` (item counts)."""
    store = open_store(f"{name}.db")
    start = 0
    for end in [*cuts, len(s.items)]:
        store.apply(s.items[start:end])
        start = end
    dump: dict[str, Any] = store.dump()
    return dump


def node_rows(open_store: OpenStore, s: Script, cuts: list[int]) -> list[tuple[Any, ...]]:
    """The node rows with `s` cut at `cuts`, checked equal to the one-by-one tables."""
    batched = applied(open_store, "batched", s, cuts)
    assert batched == applied(open_store, "single", s, list(range(1, len(s.items))))
    return [tuple(node) for node in batched["node_runs"]]


def node_row(open_store: OpenStore, s: Script, cuts: list[int]) -> tuple[Any, ...]:
    (node,) = node_rows(open_store, s, cuts)
    return node


def node_statements(tmp_path: Path, s: Script) -> int:
    """How many statements naming node_runs applying `s` in one batch ran."""
    store = SqliteReadModels.open(tmp_path / "count.db")
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    store.apply(s.items)
    store.close()
    return sum(1 for sql in seen if "node_runs" in sql)


def test_an_attempt_in_one_batch_is_written_once_as_one_by_one(
    open_store: OpenStore, engine: str, tmp_path: Path
) -> None:
    s = script(
        SUBMITTED,
        scheduled(1),
        NodeStarted("r", "a", 0, 1, "inline"),
        NodeCompleted("r", "a", 0, 1, {"v": 1}),
        RunCompleted("r", {"v": 1}),
    )
    node = node_row(open_store, s, [])
    assert (node[4], node[6], node[7]) == ("completed", "inline", {"v": 1})
    if engine == "sqlite":
        # The schedule, start and completion in one statement, then the run end's cancel.
        assert node_statements(tmp_path, s) == 2


def test_a_later_attempt_holding_the_row_is_left_as_the_updates_leave_it(
    open_store: OpenStore,
) -> None:
    """Late events of attempt 1 in one batch: the schedule does not take (attempt 2
    holds the row), and its updates do not match the row either."""
    s = script(
        SUBMITTED,
        scheduled(2),
        NodeStarted("r", "a", 0, 2, "w2"),
        scheduled(1),
        NodeStarted("r", "a", 0, 1, "w1"),
        NodeCompleted("r", "a", 0, 1, {"late": True}),
    )
    node = node_row(open_store, s, [3])
    assert (node[4], node[5], node[6]) == ("running", 2, "w2")


def test_an_attempt_already_scheduled_takes_the_updates_that_follow(
    open_store: OpenStore,
) -> None:
    """The same attempt scheduled again (another event id): the upsert does not take,
    and the start and completion then apply to the row already there."""
    s = script(
        SUBMITTED,
        scheduled(1),
        scheduled(1),
        NodeStarted("r", "a", 0, 1, "w1"),
        NodeCompleted("r", "a", 0, 1, {"v": 2}),
    )
    node = node_row(open_store, s, [2])
    assert (node[4], node[6], node[7]) == ("completed", "w1", {"v": 2})


def test_other_node_statements_find_the_attempt_written_first(open_store: OpenStore) -> None:
    """A failure and a retry in the same batch as the schedule: each finds the row the
    statements before it left."""
    s = script(
        SUBMITTED,
        scheduled(1),
        NodeStarted("r", "a", 0, 1, "w1"),
        NodeFailed("r", "a", 0, 1, "boom", retryable=True),
        scheduled(2),
        NodeStarted("r", "a", 0, 2, "w2"),
        NodeCompleted("r", "a", 0, 2, {"v": 3}),
        RunCompleted("r", {"v": 3}),
    )
    node = node_row(open_store, s, [])
    assert (node[4], node[5], node[6]) == ("completed", 2, "w2")


def test_the_attempts_of_a_batch_go_in_one_statement_and_those_that_miss_update_alone(
    open_store: OpenStore, engine: str, tmp_path: Path
) -> None:
    """Three nodes in one batch: a scheduled, started and completed; b only scheduled;
    c's attempt 1 arriving after attempt 2 holds its row (an earlier batch), so its
    upsert does not take and its start and completion run as they are (and miss)."""
    dag = {"name": "three", "nodes": [{"id": n, "type": "noop"} for n in "abc"]}

    def node(node_id: str, attempt: int) -> NodeScheduled:
        return NodeScheduled("r", node_id, "noop", 0, attempt, {}, {"inputs": {}}, 5_000)

    s = script(
        RunSubmitted("r", dag, {}, ["noop"]),
        node("c", 2),
        node("a", 1),
        NodeStarted("r", "a", 0, 1, "wa"),
        NodeCompleted("r", "a", 0, 1, {"a": 1}),
        node("b", 1),
        node("c", 1),
        NodeStarted("r", "c", 0, 1, "late"),
        NodeCompleted("r", "c", 0, 1, {"late": True}),
    )
    rows = {row[1]: (row[4], row[5], row[6]) for row in node_rows(open_store, s, [2])}
    assert rows == {
        "a": ("completed", 1, "wa"),
        "b": ("scheduled", 1, None),
        "c": ("scheduled", 2, None),
    }
    if engine != "sqlite":
        return
    store = SqliteReadModels.open(tmp_path / "count.db")
    store.apply(s.items[:2])
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    store.apply(s.items[2:])
    store.close()
    # The three attempts in two statements (of 2 and 1 rows: sizes are powers of two,
    # so that few statements are prepared), then c's start and completion.
    assert sum(1 for sql in seen if "node_runs" in sql) == 4
