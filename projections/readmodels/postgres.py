"""The read models of a cluster, in PostgreSQL through asyncpg.

The counterpart of `SqliteReadModels`: the same tables, the same projection plans
(`views`), the same queries (`queries`), the same method names, but every method is
a coroutine. SQL is written once, with `:name` placeholders; `to_asyncpg` numbers
them for asyncpg.

Exactly-once: `apply` writes the rows and the log positions in one transaction and
skips positions already stored. Each batch locks the offsets table against other
writers (readers go on), so two projectors fed the same records by mistake still
apply each once.

The read models live in the DSN's database, in the first schema of its search path:
`postgresql://.../aob?search_path=readmodels` keeps them in a schema of their own.

The database is disposable like the SQLite file: it holds nothing the log does not,
so a rebuild is "drop the tables (or the database), apply the log from offset 0".
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from types import TracebackType
from typing import Any, Self, TypeAlias

import asyncpg

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
    Plan,
    Positioned,
    Row,
    Step,
    offset_params,
    project,
    select_new,
)

MIGRATIONS_PACKAGE = "aob.projections.readmodels"

# The pg_advisory_xact_lock key of migrations (any bigint; this one spells "aobmigr").
MIGRATION_LOCK = 0x616F626D696772
# Blocks other writers of the read models, not their readers (ACCESS SHARE).
LOCK_WRITERS = "LOCK TABLE projector_offsets IN EXCLUSIVE MODE"

Migration: TypeAlias = tuple[int, str, str]
Connection: TypeAlias = Any  # asyncpg.Connection or a pool's proxy of one; asyncpg is untyped


class PostgresReadModels:
    """Queryable read models fed by the projector; build with `await open(dsn)`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        migrations: Sequence[Migration] | None = None,
    ) -> Self:
        """Connect and bring the schema up to date (the shipped migrations unless
        `migrations` says otherwise); safe to run from several processes at once."""
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings={"application_name": "aob-readmodels"},
        )
        try:
            async with pool.acquire() as conn:
                await migrate(conn, shipped_migrations() if migrations is None else migrations)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the write side -----------------------------------------------------------------

    async def apply(self, batch: Sequence[tuple[Positioned, Event]]) -> None:
        """Apply a batch of decoded events and advance the offsets, in one transaction.

        Events below their partition's stored offset were applied before and are
        skipped, so a batch re-delivered after a crash changes nothing.
        """
        if not batch:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_WRITERS)
            todo, advanced = select_new(batch, await _offsets(conn))
            await _apply_plans(conn, [project(event, position) for position, event in todo])
            for tp, next_offset in advanced.items():
                await _step(conn, Exec(SAVE_OFFSET, offset_params(tp, next_offset)))

    async def advance(self, positions: Mapping[TopicPartition, int]) -> None:
        """Move partitions' offsets forward over records that project nothing (poison
        set aside, Kafka's transaction markers); never back."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_WRITERS)
            current = await _offsets(conn)
            for tp, next_offset in positions.items():
                if next_offset > current.get(tp, 0):
                    await _step(conn, Exec(SAVE_OFFSET, offset_params(tp, next_offset)))

    async def offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset of the next event to apply (absent means 0)."""
        async with self._pool.acquire() as conn:
            return await _offsets(conn)

    # --- queries ------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run with its node runs (key "nodes"), or None."""
        async with self._snapshot() as conn:
            run = await _one(conn, q.GET_RUN, {"run_id": run_id})
            if run is not None:
                run["nodes"] = await _all(conn, q.RUN_NODES, {"run_id": run_id})
        return run

    async def run_summary(self, run_id: str) -> dict[str, Any] | None:
        """The run's row as `list_runs` gives it (no definition, no nodes), or None."""
        return await self._one(q.GET_RUN_SUMMARY, {"run_id": run_id})

    async def list_runs(
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
        async with self._pool.acquire() as conn:
            rows = await _fetch(conn, sql, params)
        return q.runs_page(rows, limit)

    async def timeline(
        self, key: str, after_offset: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """The events of one key (run id, workflow id, tag) in log order."""
        after = -1 if after_offset is None else after_offset
        return await self._all(q.TIMELINE, {"key": key, "after": after, "limit": limit})

    async def get_workflow(
        self, workflow_id: str, version: int | None = None
    ) -> dict[str, Any] | None:
        """One version of a workflow; the latest when `version` is None."""
        if version is None:
            return await self._one(q.GET_LATEST_WORKFLOW, {"workflow_id": workflow_id})
        return await self._one(q.GET_WORKFLOW, {"workflow_id": workflow_id, "version": version})

    async def list_workflows(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """The latest version of each workflow, with its number of versions."""
        return await self._all(*q.list_workflows(tenant))

    async def get_tag(self, tag: str) -> dict[str, Any] | None:
        return await self._one(q.GET_TAG, {"tag": tag})

    async def list_tags(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return await self._all(*q.list_tags(tenant))

    async def list_patches(self, run_id: str) -> list[dict[str, Any]]:
        """A run's patches in the order they were proposed."""
        return await self._all(q.LIST_PATCHES, {"run_id": run_id})

    async def get_patch(self, run_id: str, patch_id: str) -> dict[str, Any] | None:
        return await self._one(q.GET_PATCH, {"run_id": run_id, "patch_id": patch_id})

    async def list_approvals(
        self, run_id: str | None = None, status: str | None = None, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """Approvals, oldest request first; `status="pending"` is the inbox."""
        return await self._all(*q.list_approvals(run_id, status, tenant))

    async def get_approval(self, approval_id: str) -> dict[str, Any] | None:
        return await self._one(q.GET_APPROVAL, {"approval_id": approval_id})

    async def due_timers(self, now_ms: int, limit: int = 100) -> list[dict[str, Any]]:
        """Unfired timers with `fire_at <= now_ms`, earliest first."""
        return await self._all(q.DUE_TIMERS, {"now": now_ms, "limit": limit})

    # LLM usage and budgets (aob.projections.usage): see queries for each contract.

    async def run_usage(self, run_id: str) -> list[dict[str, Any]]:
        return await self._all(q.USAGE_OF_RUN, {"run_id": run_id})

    async def spend(
        self,
        run_id: str | None = None,
        tenant: str | None = None,
        since: int | None = None,
        excluding: Sequence[str] = (),
    ) -> dict[str, Any]:
        row = await self._one(*q.spend(run_id, tenant, since, excluding))
        assert row is not None  # an aggregate always has its row
        return row

    async def usage_recorded(self, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        return {row["event_id"] for row in await self._all(*q.usage_recorded(event_ids))}

    async def run_budget(self, run_id: str) -> dict[str, Any] | None:
        return await self._one(q.RUN_BUDGET, {"run_id": run_id})

    async def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every table's rows in primary-key order (`queries.dump_row`): two stores fed
        the same events must dump equal, however the events were batched."""
        async with self._snapshot() as conn:
            return {
                table: [
                    q.dump_row(dict(row.items()))
                    for row in await conn.fetch(f"SELECT * FROM {table} ORDER BY {keys}")
                ]
                for table, keys in q.TABLE_KEYS.items()
            }

    # --- plumbing -----------------------------------------------------------------------

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Connection]:
        """Several reads that must see one state of the tables."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield conn

    async def _one(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        async with self._pool.acquire() as conn:
            return await _one(conn, sql, params)

    async def _all(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        async with self._pool.acquire() as conn:
            return await _all(conn, sql, params)


# --- statements -----------------------------------------------------------------------------

# String literals, quoted identifiers and comments are copied as they are; `::` is a cast.
_TOKENS = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|::|:([A-Za-z_][A-Za-z0-9_]*)""")


@functools.lru_cache(maxsize=1024)
def to_asyncpg(sql: str) -> tuple[str, tuple[str, ...]]:
    """`:name` placeholders as asyncpg's `$n`, and the parameter name of each `$n`.

    A name used twice is one parameter, so Postgres infers one type for it.
    """
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _TOKENS.sub(number, sql), tuple(names)


def arguments(names: Sequence[str], params: Mapping[str, Any]) -> list[Any]:
    """The values of `params` in `$n` order.

    Postgres text cannot hold NUL, which SQLite and the log accept: it becomes U+FFFD
    here, since refusing the event would stall the read models behind it for good.
    """
    missing = [name for name in names if name not in params]
    if missing:
        raise KeyError(f"statement parameters not given: {', '.join(missing)}")
    return [_storable(params[name]) for name in names]


def _storable(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


async def _step(conn: Connection, step: Step) -> Row | None:
    sql, names = to_asyncpg(step.sql)
    args = arguments(names, step.params)
    if isinstance(step, Exec):
        await conn.execute(sql, *args)
        return None
    row = await conn.fetchrow(sql, *args)
    return None if row is None else dict(row)


# The batch's timeline rows in one statement: the plans' first steps (the insert that
# also deduplicates) are then answered without a round trip each.
_INSERT_TIMELINE_ROWS = """
INSERT INTO timeline (topic, "partition", "offset", event_id, key, type, occurred_at,
                      actor, trace_id, causation_id, data)
SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::text[],
                     $6::text[], $7::bigint[], $8::text[], $9::text[], $10::text[],
                     $11::json[])
ON CONFLICT DO NOTHING
RETURNING topic, "partition", "offset"
"""
_TIMELINE_COLUMNS = (
    "topic", "partition", "offset", "event_id", "key", "type", "occurred_at", "actor",
    "trace_id", "causation_id", "data",
)  # fmt: skip

# Every touch of a run in the batch, as one statement: `updated_at` only ever moves
# forward (the latest time wins whatever the order), and nothing reads it mid-batch.
_TOUCH_RUNS = """
UPDATE runs SET updated_at = GREATEST(runs.updated_at, touched.at)
FROM unnest($1::text[], $2::bigint[]) AS touched(run_id, at)
WHERE runs.run_id = touched.run_id
"""


async def _apply_plans(conn: Connection, plans: list[Plan]) -> None:
    """Drive the batch's plans in order on `conn`. Each plan's first step is its
    timeline insert, which doubles as deduplication: all of them go in first, as one
    statement, and each plan learns from it whether its row went in (an event id seen
    before, in the table or earlier in the batch, inserts nothing)."""
    firsts = [next(plan, None) for plan in plans]
    timeline = [step.params for step in firsts if step is not None and step.sql is INSERT_TIMELINE]
    inserted = await _insert_timeline(conn, timeline)
    touched: dict[str, int] = {}  # run id -> latest time it changed
    nodes = NodeAttempts()
    for plan, first in zip(plans, firsts, strict=True):
        step = first
        while step is not None:
            answer: Row | None = None
            if step.sql is INSERT_TIMELINE:
                position = (step.params["topic"], step.params["partition"], step.params["offset"])
                answer = {"event_id": step.params["event_id"]} if position in inserted else None
            elif step.sql is TOUCH_RUN:
                run_id, at = step.params["run_id"], step.params["at"]
                touched[run_id] = max(at, touched.get(run_id, at))
            else:
                held, before = nodes.take(step)
                await _write_attempts(conn, before)
                if not held:
                    answer = await _step(conn, step)
            step = _send(plan, answer)
    await _write_attempts(conn, nodes.drain())
    if touched:
        await conn.execute(_TOUCH_RUNS, list(touched), list(touched.values()))


# A batch's node attempts in one statement (see `NodeAttempts`).
_SCHEDULE_NODES_AS_OF = f"""{SCHEDULE_NODES_AS_OF}
SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::int[],
                     $7::text[], $8::json[], $9::bigint[], $10::bigint[], $11::bigint[])
{NODE_ATTEMPT_UPSERT}"""


async def _write_attempts(conn: Connection, attempts: Sequence[NodeAttempt]) -> None:
    """Node attempts in one upsert; those that did not take get their updates alone."""
    if not attempts:
        return
    rows = [attempt.row() for attempt in attempts]
    columns = [[_storable(row[name]) for row in rows] for name in NODE_ATTEMPT_PARAMS]
    took = {
        (r["run_id"], r["node_id"], r["iteration"])
        for r in await conn.fetch(_SCHEDULE_NODES_AS_OF, *columns)
    }
    for attempt in attempts:
        for update in attempt.missed(took):
            await _step(conn, update)


def _send(plan: Plan, answer: Row | None) -> Step | None:
    try:
        return plan.send(answer)
    except StopIteration:
        return None


async def _insert_timeline(
    conn: Connection, rows: Sequence[Mapping[str, Any]]
) -> set[tuple[str, int, int]]:
    """Insert timeline rows at once; the (topic, partition, offset) of those that went in."""
    if not rows:
        return set()
    columns = [[_storable(row[name]) for row in rows] for name in _TIMELINE_COLUMNS]
    inserted = await conn.fetch(_INSERT_TIMELINE_ROWS, *columns)
    return {(r["topic"], r["partition"], r["offset"]) for r in inserted}


async def _fetch(conn: Connection, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    statement, names = to_asyncpg(sql)
    return [dict(row) for row in await conn.fetch(statement, *arguments(names, params))]


async def _one(conn: Connection, sql: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
    rows = await _fetch(conn, sql, params)
    return q.decode_row(rows[0]) if rows else None


async def _all(conn: Connection, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [q.decode_row(row) for row in await _fetch(conn, sql, params)]


async def _offsets(conn: Connection) -> dict[TopicPartition, int]:
    rows = await conn.fetch(LOAD_OFFSETS)
    return {TopicPartition(row[0], row[1]): row[2] for row in rows}


# --- migrations -----------------------------------------------------------------------------


async def migrate(conn: Connection, migrations: Sequence[Migration]) -> list[int]:
    """Apply the migrations the database lacks, in version order and in one transaction;
    returns their versions. The advisory lock makes concurrent openers take turns, so
    each migration runs once."""
    versions = [version for version, _, _ in migrations]
    repeated = sorted({version for version in versions if versions.count(version) > 1})
    if repeated:
        raise ValueError(f"migration version {repeated[0]} appears twice")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, name, script in sorted(migrations):
            if version in done:
                continue
            await conn.execute(script)  # no arguments: the simple protocol runs a whole script
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(version)
    return applied


def shipped_migrations() -> list[Migration]:
    """(version, file name, SQL) of the shipped PostgreSQL migrations, in order.

    Files are named `NNNN_description.sql` and shipped as package data.
    """
    folder = resources.files(MIGRATIONS_PACKAGE).joinpath("migrations").joinpath("postgres")
    found = [
        (int(entry.name.split("_", 1)[0]), entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(found)
