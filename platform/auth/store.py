"""Where token records live: a SQLite file in the data dir (embedded) or a table in
the cluster's PostgreSQL. Unlike the read models these rows are not derived from the
log: back them up with the database (or re-issue tokens)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from aob.platform.auth.tokens import TokenRecord

_COLUMNS = (
    "token_id, name, tenant, roles, secret_hash, created_at, created_by, expires_at,"
    " revoked_at, description"
)
# The pg_advisory_xact_lock key that serializes creating the table ("aobauth").
_SCHEMA_LOCK = 0x616F6261757468


class TokenStore(Protocol):
    async def add(self, record: TokenRecord) -> None: ...

    async def get(self, token_id: str) -> TokenRecord | None: ...

    async def listing(self, tenant: str | None = None) -> list[TokenRecord]:
        """Tokens of `tenant` (every tenant's when None), oldest first."""

    async def revoke(
        self, token_id: str, now_ms: int, tenant: str | None = None
    ) -> TokenRecord | None:
        """Revoke the token (of `tenant`, when given); None if there is no such token.
        Revoking twice keeps the first time."""

    async def ping(self) -> None:
        """Raise unless the store answers (for /health)."""

    async def close(self) -> None: ...


def _values(record: TokenRecord) -> tuple[Any, ...]:
    return (
        record.token_id,
        record.name,
        record.tenant,
        ",".join(sorted(record.roles)),
        record.secret_hash,
        record.created_at,
        record.created_by,
        record.expires_at,
        record.revoked_at,
        record.description,
    )


def _record(row: Sequence[Any]) -> TokenRecord:
    return TokenRecord(
        token_id=row[0],
        name=row[1],
        tenant=row[2],
        roles=frozenset(r for r in row[3].split(",") if r),
        secret_hash=row[4],
        created_at=row[5],
        created_by=row[6],
        expires_at=row[7],
        revoked_at=row[8],
        description=row[9],
    )


_CREATE = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    " token_id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant TEXT NOT NULL,"
    " roles TEXT NOT NULL, secret_hash TEXT NOT NULL, created_at BIGINT NOT NULL,"
    " created_by TEXT NOT NULL, expires_at BIGINT, revoked_at BIGINT,"
    " description TEXT NOT NULL DEFAULT '')"
)


class SqliteTokenStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> SqliteTokenStore:
        return cls(await asyncio.to_thread(_open_sqlite, str(path)))

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._lock:
            return await asyncio.to_thread(lambda: self._conn.execute(sql, params).fetchall())

    async def add(self, record: TokenRecord) -> None:
        await self._run(
            f"INSERT INTO tokens ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", _values(record)
        )

    async def get(self, token_id: str) -> TokenRecord | None:
        rows = await self._run(f"SELECT {_COLUMNS} FROM tokens WHERE token_id = ?", (token_id,))
        return _record(rows[0]) if rows else None

    async def listing(self, tenant: str | None = None) -> list[TokenRecord]:
        if tenant is None:
            rows = await self._run(f"SELECT {_COLUMNS} FROM tokens ORDER BY created_at, token_id")
        else:
            rows = await self._run(
                f"SELECT {_COLUMNS} FROM tokens WHERE tenant = ? ORDER BY created_at, token_id",
                (tenant,),
            )
        return [_record(row) for row in rows]

    async def revoke(
        self, token_id: str, now_ms: int, tenant: str | None = None
    ) -> TokenRecord | None:
        await self._run(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?)"
            " WHERE token_id = ? AND (? IS NULL OR tenant = ?)",
            (now_ms, token_id, tenant, tenant),
        )
        found = await self.get(token_id)
        return found if found is not None and tenant in (None, found.tenant) else None

    async def ping(self) -> None:
        await self._run("SELECT 1 FROM tokens LIMIT 1")

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._conn.close)


def _open_sqlite(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute(_CREATE.format(table="tokens"))
    return conn


class PostgresTokenStore:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, *, max_size: int = 4) -> PostgresTokenStore:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await conn.execute(_CREATE.format(table="aob_tokens"))
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def add(self, record: TokenRecord) -> None:
        await self._pool.execute(
            f"INSERT INTO aob_tokens ({_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
            *_values(record),
        )

    async def get(self, token_id: str) -> TokenRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM aob_tokens WHERE token_id = $1", token_id
        )
        return _record(tuple(row)) if row is not None else None

    async def listing(self, tenant: str | None = None) -> list[TokenRecord]:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM aob_tokens WHERE $1::text IS NULL OR tenant = $1"
            " ORDER BY created_at, token_id",
            tenant,
        )
        return [_record(tuple(row)) for row in rows]

    async def revoke(
        self, token_id: str, now_ms: int, tenant: str | None = None
    ) -> TokenRecord | None:
        row = await self._pool.fetchrow(
            f"UPDATE aob_tokens SET revoked_at = COALESCE(revoked_at, $2)"
            f" WHERE token_id = $1 AND ($3::text IS NULL OR tenant = $3) RETURNING {_COLUMNS}",
            token_id,
            now_ms,
            tenant,
        )
        return _record(tuple(row)) if row is not None else None

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1 FROM aob_tokens LIMIT 1")

    async def close(self) -> None:
        await self._pool.close()
