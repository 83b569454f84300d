"""The read models of the embedded default, in their own SQLite file.

Methods are synchronous on purpose: the file is local, every query is a short
indexed lookup, and sqlite3 has no async API anyway. Async callers that want to
keep their loop free can use `asyncio.to_thread`; one lock serialises use of the
single connection across threads.

The file is disposable: it holds nothing the log does not, so a rebuild is
"delete the file, apply the log from offset 0".
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from types import TracebackType
from typing import Any, Self, TypeVar

from aob.events.log.port import TopicPartition
from aob.events.types import Event
from aob.projections.readmodels import queries as q
from aob.projections.readmodels.views import (
    INSERT_TIMELINE,
    LOAD_OFFSETS,
    NODE_ATTEMPT_PARAMS,
    NODE_ATTEMPT_UPSERT,
    SAVE_OFFSET,
    SCHEDULE_NODES_AS_OF,
    TOUCH_RUN,
    Exec,
    NodeAttempt,
    NodeAttempts,
    Params,
    Plan,
    Positioned,
    Row,
    Step,
    offset_params,
    project,
    select_new,
)

MIGRATIONS_PACKAGE = "aob.projections.readmodels"


class SqliteReadModels:
    """Queryable read models fed by the projector; build with `open`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Self:
        """Open (or create) the file and bring its schema up to date; idempotent."""
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL may lose the last commits on power loss but never tears one;
            # the offsets live in the same transactions, so the projector just
            # re-applies what was lost.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA busy_timeout = 5000")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the write side -----------------------------------------------------------------

    def apply(self, batch: Sequence[tuple[Positioned, Event]]) -> None:
        """Apply a batch of decoded events and advance the offsets, in one transaction.

        Events below their partition's stored offset were applied before and are
        skipped, so a batch re-delivered after a crash changes nothing.
        """
        if not batch:
            return
        with self._lock, self._transaction("BEGIN IMMEDIATE"):
            todo, advanced = select_new(batch, self._offsets())
            self._apply_plans([project(event, position) for position, event in todo])
            for tp, next_offset in advanced.items():
                self._execute(Exec(SAVE_OFFSET, offset_params(tp, next_offset)))

    def advance(self, positions: Mapping[TopicPartition, int]) -> None:
        """Move partitions' offsets forward over records that project nothing (poison
        set aside, Kafka's transaction markers); never back."""
        with self._lock, self._transaction("BEGIN IMMEDIATE"):
            current = self._offsets()
            for tp, next_offset in positions.items():
                if next_offset > current.get(tp, 0):
                    self._execute(Exec(SAVE_OFFSET, offset_params(tp, next_offset)))

    def offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset of the next event to apply (absent means 0)."""
        with self._lock:
            return self._offsets()

    # --- queries ------------------------------------------------------------------------

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run with its node runs (key "nodes"), or None."""
        with self._lock, self._transaction("BEGIN"):
            run = self._one(q.GET_RUN, {"run_id": run_id})
            if run is not None:
                run["nodes"] = self._all(q.RUN_NODES, {"run_id": run_id})
        return run

    def run_summary(self, run_id: str) -> dict[str, Any] | None:
        """The run's row as `list_runs` gives it (no definition, no nodes), or None."""
        return self._locked_one(q.GET_RUN_SUMMARY, {"run_id": run_id})

    def list_runs(
        self,
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
        tenant: str | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of runs, newest first, and the cursor for the next page (or None);
        `since`/`until`: submitted in [since, until), epoch ms."""
        sql, params = q.list_runs(status, workflow_id, limit, before, tenant, since, until)
        with self._lock:
            rows = [dict(row) for row in self._conn.execute(sql, params)]
        return q.runs_page(rows, limit)

    def timeline(
        self, key: str, after_offset: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """The events of one key (run id, workflow id, tag) in log order."""
        after = -1 if after_offset is None else after_offset
        return self._locked_all(q.TIMELINE, {"key": key, "after": after, "limit": limit})

    def get_workflow(self, workflow_id: str, version: int | None = None) -> dict[str, Any] | None:
        """One version of a workflow; the latest when `version` is None."""
        if version is None:
            return self._locked_one(q.GET_LATEST_WORKFLOW, {"workflow_id": workflow_id})
        return self._locked_one(q.GET_WORKFLOW, {"workflow_id": workflow_id, "version": version})

    def list_workflows(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """The latest version of each workflow, with its number of versions."""
        return self._locked_all(*q.list_workflows(tenant))

    def get_tag(self, tag: str) -> dict[str, Any] | None:
        return self._locked_one(q.GET_TAG, {"tag": tag})

    def list_tags(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return self._locked_all(*q.list_tags(tenant))

    def list_patches(self, run_id: str) -> list[dict[str, Any]]:
        """A run's patches in the order they were proposed."""
        return self._locked_all(q.LIST_PATCHES, {"run_id": run_id})

    def get_patch(self, run_id: str, patch_id: str) -> dict[str, Any] | None:
        return self._locked_one(q.GET_PATCH, {"run_id": run_id, "patch_id": patch_id})

    def list_approvals(
        self, run_id: str | None = None, status: str | None = None, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """Approvals, oldest request first; `status="pending"` is the inbox."""
        return self._locked_all(*q.list_approvals(run_id, status, tenant))

    def get_approval(self, approval_id: str) -> dict[str, Any] | None:
        return self._locked_one(q.GET_APPROVAL, {"approval_id": approval_id})

    def due_timers(self, now_ms: int, limit: int = 100) -> list[dict[str, Any]]:
        """Unfired timers with `fire_at <= now_ms`, earliest first."""
        return self._locked_all(q.DUE_TIMERS, {"now": now_ms, "limit": limit})

    # LLM usage and budgets (aob.projections.usage): see queries for each contract.

    def run_usage(self, run_id: str) -> list[dict[str, Any]]:
        return self._locked_all(q.USAGE_OF_RUN, {"run_id": run_id})

    def spend(
        self,
        run_id: str | None = None,
        tenant: str | None = None,
        since: int | None = None,
        excluding: Sequence[str] = (),
    ) -> dict[str, Any]:
        row = self._locked_one(*q.spend(run_id, tenant, since, excluding))
        assert row is not None  # an aggregate always has its row
        return row

    def usage_recorded(self, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        return {row["event_id"] for row in self._locked_all(*q.usage_recorded(event_ids))}

    def run_budget(self, run_id: str) -> dict[str, Any] | None:
        return self._locked_one(q.RUN_BUDGET, {"run_id": run_id})

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every table's rows in primary-key order (`queries.dump_row`): two stores fed
        the same events must dump equal, however the events were batched."""
        with self._lock, self._transaction("BEGIN"):
            return {
                table: [
                    q.dump_row(dict(row))
                    for row in self._conn.execute(f"SELECT * FROM {table} ORDER BY {keys}")
                ]
                for table, keys in q.TABLE_KEYS.items()
            }

    # --- plumbing -----------------------------------------------------------------------

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[None]:
        """Reads take a snapshot (BEGIN); writes take the write lock up front
        (BEGIN IMMEDIATE) so they never fail mid-batch on a lock upgrade."""
        self._conn.execute(begin)
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _apply_plans(self, plans: list[Plan]) -> None:
        """Drive the batch's plans in order. Each plan's first step is its timeline
        insert, which doubles as deduplication: all of them go in first, in a few
        multi-row statements (one each cost more than the rest of a plan), and each plan
        learns from them whether its row went in (an event id seen before, in the table
        or earlier in the batch, inserts nothing). Nothing a plan does reads a timeline
        row of a later event. A run's `updated_at` (the latest event time, which nothing
        in the batch reads) is set once per batch instead of once per event (one
        statement for all the batch's runs measured no cheaper)."""
        firsts = [next(plan, None) for plan in plans]
        rows = [step.params for step in firsts if step is not None and step.sql is INSERT_TIMELINE]
        inserted = self._insert_timeline(rows)
        touched: dict[str, int] = {}
        nodes = NodeAttempts()
        for plan, first in zip(plans, firsts, strict=True):
            step = first
            while step is not None:
                answer: Row | None = None
                if step.sql is INSERT_TIMELINE:
                    params = step.params
                    position = (params["topic"], params["partition"], params["offset"])
                    answer = {"event_id": params["event_id"]} if position in inserted else None
                elif step.sql is TOUCH_RUN:
                    run_id, at = step.params["run_id"], step.params["at"]
                    touched[run_id] = max(at, touched.get(run_id, at))
                else:
                    held, before = nodes.take(step)
                    self._write_attempts(before)
                    if not held:
                        answer = self._execute(step)
                step = _send(plan, answer)
        self._write_attempts(nodes.drain())
        for run_id, at in touched.items():
            self._execute(Exec(TOUCH_RUN, {"run_id": run_id, "at": at}))

    def _insert_timeline(self, rows: Sequence[Params]) -> set[tuple[str, int, int]]:
        """Insert timeline rows in batch order; the (topic, partition, offset) of those
        that went in."""
        inserted: set[tuple[str, int, int]] = set()
        for chunk in _chunks(rows, _TIMELINE_CHUNK):
            values = [row[name] for row in chunk for name in _TIMELINE_COLUMNS]
            cursor = self._conn.execute(_insert_timeline_rows(len(chunk)), values)
            inserted.update((topic, partition, offset) for topic, partition, offset in cursor)
        return inserted

    def _write_attempts(self, attempts: Sequence[NodeAttempt]) -> None:
        """Node attempts in multi-row upserts; those that did not take get their
        updates alone."""
        for chunk in _chunks(attempts, _NODE_CHUNK):
            rows = [attempt.row() for attempt in chunk]
            values = [row[name] for row in rows for name in NODE_ATTEMPT_PARAMS]
            statement = _schedule_nodes_as_of(len(chunk))
            took = {tuple(key) for key in self._conn.execute(statement, values)}
            for attempt in chunk:
                for update in attempt.missed(took):
                    self._execute(update)

    def _execute(self, step: Step) -> Row | None:
        cursor = self._conn.execute(step.sql, step.params)
        if isinstance(step, Exec):
            return None
        rows = cursor.fetchall()
        return dict(rows[0]) if rows else None

    def _offsets(self) -> dict[TopicPartition, int]:
        rows = self._conn.execute(LOAD_OFFSETS).fetchall()
        return {TopicPartition(row[0], row[1]): row[2] for row in rows}

    def _one(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        row = self._conn.execute(sql, params).fetchone()
        return None if row is None else q.decode_row(dict(row))

    def _all(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [q.decode_row(dict(row)) for row in self._conn.execute(sql, params)]

    def _locked_one(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            return self._one(sql, params)

    def _locked_all(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        with self._lock:
            return self._all(sql, params)


T = TypeVar("T")


def _chunks(items: Sequence[T], limit: int) -> Iterator[Sequence[T]]:
    """`items` in order, in chunks of powers of two up to `limit`: a multi-row statement
    is prepared once per size, so the sizes are kept few (SQLite's statement cache)."""
    start = 0
    while start < len(items):
        size = min(limit, 1 << ((len(items) - start).bit_length() - 1))
        yield items[start : start + size]
        start += size


_TIMELINE_COLUMNS = (
    "topic", "partition", "offset", "event_id", "key", "type", "occurred_at", "actor",
    "trace_id", "causation_id", "data",
)  # fmt: skip
_TIMELINE_CHUNK = 128  # rows per statement at most: 1,408 parameters (SQLite allows 32,766)


@functools.cache
def _insert_timeline_rows(rows: int) -> str:
    """`INSERT_TIMELINE` for `rows` rows at once, answering with the positions inserted
    (ON CONFLICT DO NOTHING applies row by row, in order, as separate inserts would)."""
    row = "(" + ", ".join("?" * len(_TIMELINE_COLUMNS)) + ")"
    columns = ", ".join(f'"{name}"' for name in _TIMELINE_COLUMNS)
    return (
        f"INSERT INTO timeline ({columns}) VALUES {', '.join([row] * rows)} "
        'ON CONFLICT DO NOTHING RETURNING topic, "partition", "offset"'
    )


@functools.cache
def _schedule_nodes_as_of(rows: int) -> str:
    """`SCHEDULE_NODES_AS_OF` for `rows` attempts, as one statement of `rows` rows."""
    row = "(" + ", ".join("?" * len(NODE_ATTEMPT_PARAMS)) + ")"
    return f"{SCHEDULE_NODES_AS_OF} VALUES {', '.join([row] * rows)}\n{NODE_ATTEMPT_UPSERT}"


_NODE_CHUNK = 64  # attempts per statement at most: 704 parameters


def _send(plan: Plan, answer: Row | None) -> Step | None:
    try:
        return plan.send(answer)
    except StopIteration:
        return None


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply the migrations `conn` lacks, all in one transaction; returns their versions.

    Running under BEGIN IMMEDIATE means two processes opening a new file at once
    cannot both migrate it.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL)"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        applied = []
        for version, name, script in migrations():
            if version in done:
                continue
            for statement in statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, name))
            applied.append(version)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return applied


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of the shipped SQLite migrations, in order.

    Files are named `NNNN_description.sql` and shipped as package data.
    """
    folder = resources.files(MIGRATIONS_PACKAGE).joinpath("migrations").joinpath("sqlite")
    found = [
        (int(entry.name.split("_", 1)[0]), entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(found)


def statements(script: str) -> Iterator[str]:
    """Split a script into statements, because `executescript` would commit first
    and so could not run inside the migration's transaction."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if _has_sql(pending):
        raise ValueError(f"incomplete SQL statement at end of migration: {pending!r}")


def _has_sql(text: str) -> bool:
    lines = (line.split("--", 1)[0].strip() for line in text.splitlines())
    return any(lines)
