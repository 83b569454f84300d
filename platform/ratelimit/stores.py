"""Where the limiter's state lives: one row per (tenant, tier) holding its TAT.

Every API process of a cluster shares the Postgres table; the embedded server keeps
the table in a SQLite file of its data dir. Each admission reads and writes its row
inside one transaction that holds the row's lock (Postgres: SELECT ... FOR UPDATE;
SQLite: BEGIN IMMEDIATE, the database's write lock), so concurrent requests, from
one process or many, are admitted one after another and never overspend.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from aob.platform.ratelimit.gcra import Decision, gcra
from aob.platform.ratelimit.tiers import Rule

# The pg_advisory_xact_lock key that serializes creating the table ("aobrate").
_SCHEMA_LOCK = 0x616F6272617465


class LimiterStore(Protocol):
    async def admit(
        self, tenant: str, tier: str, rule: Rule, now_ms: float | None = None
    ) -> Decision:
        """Count one request of `tenant` in `tier` if `rule` admits it now (the store's
        clock unless `now_ms` is given)."""

    async def ping(self) -> None:
        """Raise unless the store answers (for /health)."""

    async def close(self) -> None: ...


class SqliteLimiterStore:
    """The limiter's rows in a SQLite file (embedded mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()  # one connection: one transaction at a time

    @classmethod
    async def open(cls, path: str | Path) -> SqliteLimiterStore:
        return cls(await asyncio.to_thread(_open_sqlite, str(path)))

    async def admit(
        self, tenant: str, tier: str, rule: Rule, now_ms: float | None = None
    ) -> Decision:
        async with self._lock:
            return await asyncio.to_thread(self._admit, tenant, tier, rule, now_ms)

    def _admit(self, tenant: str, tier: str, rule: Rule, now_ms: float | None) -> Decision:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = time.time() * 1000 if now_ms is None else now_ms
            row = conn.execute(
                "SELECT tat_ms FROM rate_limits WHERE tenant = ? AND tier = ?", (tenant, tier)
            ).fetchone()
            decision = gcra(None if row is None else row[0], now, rule)
            if decision.allowed:
                conn.execute(
                    "INSERT INTO rate_limits (tenant, tier, tat_ms) VALUES (?, ?, ?) "
                    "ON CONFLICT (tenant, tier) DO UPDATE SET tat_ms = excluded.tat_ms",
                    (tenant, tier, decision.tat_ms),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return decision

    async def ping(self) -> None:
        async with self._lock:
            await asyncio.to_thread(
                lambda: self._conn.execute("SELECT 1 FROM rate_limits LIMIT 1").fetchall()
            )

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._conn.close)


def _open_sqlite(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA busy_timeout = 10000")  # other processes' write locks
    conn.execute(
        "CREATE TABLE IF NOT EXISTS rate_limits ("
        " tenant TEXT NOT NULL, tier TEXT NOT NULL, tat_ms REAL NOT NULL,"
        " PRIMARY KEY (tenant, tier))"
    )
    return conn


class PostgresLimiterStore:
    """The limiter's rows in PostgreSQL, shared by every API process of a cluster.

    Time is the database's clock (`clock_timestamp()`), so processes on hosts whose
    clocks disagree still share one notion of "now".
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, *, max_size: int = 4) -> PostgresLimiterStore:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS aob_rate_limits ("
                    " tenant TEXT NOT NULL, tier TEXT NOT NULL,"
                    " tat_ms DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant, tier))"
                )
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def admit(
        self, tenant: str, tier: str, rule: Rule, now_ms: float | None = None
    ) -> Decision:
        async with self._pool.acquire() as conn, conn.transaction():
            # The row must exist to be locked; a new one starts "never used" (tat 0).
            await conn.execute(
                "INSERT INTO aob_rate_limits (tenant, tier, tat_ms) VALUES ($1, $2, 0) "
                "ON CONFLICT DO NOTHING",
                tenant,
                tier,
            )
            row = await conn.fetchrow(
                "SELECT tat_ms, extract(epoch FROM clock_timestamp()) * 1000 AS now_ms "
                "FROM aob_rate_limits WHERE tenant = $1 AND tier = $2 FOR UPDATE",
                tenant,
                tier,
            )
            now = float(row["now_ms"]) if now_ms is None else now_ms
            decision = gcra(row["tat_ms"], now, rule)
            if decision.allowed:
                await conn.execute(
                    "UPDATE aob_rate_limits SET tat_ms = $3 WHERE tenant = $1 AND tier = $2",
                    tenant,
                    tier,
                    decision.tat_ms,
                )
            return decision

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1 FROM aob_rate_limits LIMIT 1")

    async def close(self) -> None:
        await self._pool.close()
