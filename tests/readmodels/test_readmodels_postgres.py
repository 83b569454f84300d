"""What only the Postgres store has: migrations, placeholders, types, concurrent writers.

The behaviour both engines share is tested once, for both, by the other modules here.
These tests use the async store as the product does, without the `Blocking` facade.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from aob.events.log.port import TopicPartition
from aob.events.types import (
    RUNS_TOPIC,
    WORKFLOWS_TOPIC,
    Event,
    NodeFailed,
    NodeScheduled,
    Payload,
    RunSubmitted,
)
from aob.events.types import WorkflowCreated as Created
from aob.projections.readmodels import Position, SqliteReadModels
from aob.projections.readmodels.postgres import (
    PostgresReadModels,
    arguments,
    shipped_migrations,
    to_asyncpg,
)

SHIPPED = shipped_migrations()
NEXT = SHIPPED[-1][0] + 1
ADD_COLUMN = (
    NEXT,
    f"{NEXT:04d}_runs_priority.sql",
    "ALTER TABLE runs ADD COLUMN priority INTEGER;",
)


@pytest.fixture
async def pg(postgres_schema: str) -> AsyncIterator[PostgresReadModels]:
    async with await PostgresReadModels.open(postgres_schema) as store:
        yield store


async def _migrations(dsn: str) -> list[tuple[int, str, object]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
        )
    finally:
        await conn.close()
    return [tuple(row) for row in rows]


async def _columns(dsn: str, table: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            table,
        )
    finally:
        await conn.close()
    return [row[0] for row in rows]


# --- migrations ---------------------------------------------------------------------------


async def test_reopening_migrates_nothing(postgres_schema):
    await (await PostgresReadModels.open(postgres_schema)).close()
    first = await _migrations(postgres_schema)
    await (await PostgresReadModels.open(postgres_schema)).close()
    assert await _migrations(postgres_schema) == first
    assert [row[:2] for row in first] == [m[:2] for m in SHIPPED]
    assert SHIPPED[0][:2] == (1, "0001_init.sql")


async def test_a_new_migration_applies_once(postgres_schema):
    await (await PostgresReadModels.open(postgres_schema)).close()
    newer = [*SHIPPED, ADD_COLUMN]
    for _ in range(2):
        await (await PostgresReadModels.open(postgres_schema, migrations=newer)).close()
    rows = await _migrations(postgres_schema)
    assert [row[:2] for row in rows] == [*(m[:2] for m in SHIPPED), ADD_COLUMN[:2]]
    assert (await _columns(postgres_schema, "runs"))[-1] == "priority"


async def test_a_failing_migration_leaves_the_schema_as_it_was(postgres_schema):
    await (await PostgresReadModels.open(postgres_schema)).close()
    broken = (NEXT, "broken.sql", "CREATE TABLE extra (x INTEGER); SELECT no_such_column;")
    with pytest.raises(asyncpg.UndefinedColumnError):
        await PostgresReadModels.open(postgres_schema, migrations=[*SHIPPED, broken])
    assert [row[0] for row in await _migrations(postgres_schema)] == [m[0] for m in SHIPPED]
    assert await _columns(postgres_schema, "extra") == []


async def test_duplicate_migration_versions_are_refused(postgres_schema):
    twice = [*SHIPPED, ADD_COLUMN, (NEXT, "other.sql", "SELECT 1;")]
    with pytest.raises(ValueError, match=f"migration version {NEXT} appears twice"):
        await PostgresReadModels.open(postgres_schema, migrations=twice)


async def test_concurrent_opens_of_a_new_schema_migrate_it_once(postgres_schema):
    stores = await asyncio.gather(*(PostgresReadModels.open(postgres_schema) for _ in range(4)))
    for store in stores:
        await store.close()
    assert [row[0] for row in await _migrations(postgres_schema)] == [m[0] for m in SHIPPED]


async def test_the_search_path_of_the_dsn_keeps_stores_apart(postgres_schemas, script):
    """The isolation the other tests rely on, and how a deployment picks a schema."""
    async with (
        await PostgresReadModels.open(postgres_schemas.create()) as one,
        await PostgresReadModels.open(postgres_schemas.create()) as two,
    ):
        await one.apply(script.items)
        assert len((await one.dump())["timeline"]) == len(script.items)
        assert await two.dump() == {table: [] for table in await one.dump()}


# --- statements ---------------------------------------------------------------------------


def test_placeholders_are_numbered_by_first_use():
    sql = "UPDATE t SET a = :at WHERE b > :at AND c = :run_id AND d = :at2"
    assert to_asyncpg(sql) == (
        "UPDATE t SET a = $1 WHERE b > $1 AND c = $2 AND d = $3",
        ("at", "run_id", "at2"),
    )


def test_casts_literals_quoted_names_and_comments_are_not_placeholders():
    sql = """SELECT x::text, ':a', 'it''s :b', ":c" -- :d
FROM t WHERE y = :e"""
    translated, names = to_asyncpg(sql)
    assert names == ("e",)
    assert translated == sql.replace(":e", "$1")


def test_a_missing_parameter_is_named():
    _, names = to_asyncpg("SELECT :a, :b")
    with pytest.raises(KeyError, match="not given: b"):
        arguments(names, {"a": 1})


# --- types --------------------------------------------------------------------------------


async def test_epoch_millisecond_times_fit(pg):
    """INTEGER would overflow at 2**31: times are BIGINT."""
    now = 1_764_000_000_000
    await pg.apply(
        [(Position(RUNS_TOPIC, 0, 0), Event("e", "r", now, RunSubmitted("r", {}, {}, [])))]
    )
    run = await pg.get_run("r")
    assert (run["submitted_at"], run["updated_at"]) == (now, now)


async def test_nul_characters_are_stored_as_replacement_characters(pg):
    """Postgres text cannot hold NUL; refusing the event would stall the read models."""
    events: list[Payload] = [
        RunSubmitted("r", {}, {"raw": "a\x00b"}, []),
        NodeScheduled("r", "n", "http", 0, 1, {}, {}, 1_000),
        NodeFailed("r", "n", 0, 1, "bad byte \x00 here"),
    ]
    await pg.apply(
        [(Position(RUNS_TOPIC, 0, i), Event(f"e{i}", "r", i, p)) for i, p in enumerate(events)]
    )
    run = await pg.get_run("r")
    assert run["inputs"] == {"raw": "a\x00b"}  # JSON text escapes it
    assert run["nodes"][0]["error"] == "bad byte \ufffd here"
    timeline = await pg.timeline("r")
    assert timeline[2]["data"]["error"] == "bad byte \x00 here"
    assert [t["type"] for t in timeline] == ["RunSubmitted", "NodeScheduled", "NodeFailed"]


# --- both engines at once -----------------------------------------------------------------


async def test_postgres_tables_equal_sqlite_tables(pg, script, tmp_path: Path):
    """Row for row, value for value (True == 1): the engines are interchangeable."""
    await pg.apply(script.items)
    with SqliteReadModels.open(tmp_path / "readmodels.db") as sqlite:
        sqlite.apply(script.items)
        assert await pg.dump() == sqlite.dump()
        assert await pg.offsets() == sqlite.offsets()


async def test_concurrent_writers_apply_each_event_once(postgres_schemas, script):
    """Projectors fed the same records by mistake, each in its own batches: the
    offsets table lock makes them take turns, and the stored offsets make each skip
    what another applied."""
    items = script.items
    shared = postgres_schemas.create()

    async def feed(store: PostgresReadModels, cut: int) -> None:
        await store.apply(items[:cut])
        await store.apply(items[cut:])

    async with (
        await PostgresReadModels.open(shared) as one,
        await PostgresReadModels.open(shared) as two,
    ):
        await asyncio.gather(feed(one, 15), feed(two, 30), feed(one, 1), feed(two, 40))
        concurrent = await one.dump()
    assert len(concurrent["timeline"]) == len(items)
    async with await PostgresReadModels.open(postgres_schemas.create()) as alone:
        await alone.apply(items)
        assert await alone.dump() == concurrent


async def test_a_late_smaller_batch_never_moves_the_offsets_back(postgres_schemas, script):
    """Without the lock, the small batch reads the offsets before the big one commits,
    waits on its rows, skips them all, and then stores its own, smaller offsets."""
    items = script.items
    shared = postgres_schemas.create()
    end = {}
    for position, _ in items:
        end[TopicPartition(position.topic, position.partition)] = position.offset + 1

    async with (
        await PostgresReadModels.open(shared) as one,
        await PostgresReadModels.open(shared) as two,
    ):

        async def late_and_small() -> None:
            await asyncio.sleep(0.01)
            await two.apply(items[:10])

        await asyncio.gather(one.apply(items), late_and_small())
        assert await two.offsets() == end


async def test_ids_sort_bytewise_whatever_the_database_collation(postgres_dsn, tmp_path: Path):
    """A database whose default collation is linguistic (ICU "en": a < B) still lists
    like SQLite (B < a), so list orders and run cursors agree across engines."""
    name = f"aob_test_icu_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 "
            "LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C'"
        )
        dsn = postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
        ids = ["b", "B", "a", "A", "_"]
        batch = [
            (
                Position(RUNS_TOPIC, 0, i),
                Event(f"r-{i}", run_id, 100, RunSubmitted(run_id, {}, {}, [])),
            )
            for i, run_id in enumerate(ids)
        ]
        batch += [
            (Position(WORKFLOWS_TOPIC, 0, i), Event(f"w-{i}", wf, 1, Created(wf, 1, {})))
            for i, wf in enumerate(ids)
        ]
        async with await PostgresReadModels.open(dsn) as pg:
            await pg.apply(batch)
            with SqliteReadModels.open(tmp_path / "rm.db") as sqlite:
                sqlite.apply(batch)
                pages = [await pg.list_runs(limit=2)]
                while pages[-1][1] is not None:
                    pages.append(await pg.list_runs(limit=2, before=pages[-1][1]))
                assert [[r["run_id"] for r in items] for items, _ in pages] == [
                    ["b", "a"],
                    ["_", "B"],
                    ["A"],
                ]
                assert await pg.list_runs() == sqlite.list_runs()
                assert await pg.list_workflows() == sqlite.list_workflows()
                assert await pg.dump() == sqlite.dump()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
