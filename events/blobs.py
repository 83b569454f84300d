"""Content-addressed storage for large values that events refer to instead of carrying.

A blob's reference is `sha256:<hex digest of its bytes>`: the same bytes always get
the same reference, storing them twice is a no-op, and a reader can verify what it
got. Events stay small (Kafka's message size, read-model rows), and the reference is
all a consumer needs to fetch the value.

Adapters: `FileBlobStore` (a directory, e.g. under the embedded data dir); an object
store (S3, GCS) is one more adapter of the same port.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

_REF = re.compile(r"sha256:([0-9a-f]{64})")


class BlobError(Exception):
    """A reference that is malformed, unknown, or whose bytes do not match it."""


class BlobStore(Protocol):
    """Stores bytes under their content address."""

    async def put(self, data: bytes) -> str:
        """Store `data`; returns its reference ("sha256:<hex>")."""
        ...

    async def get(self, ref: str) -> bytes:
        """The bytes stored under `ref`; raises BlobError when there are none."""
        ...


def blob_ref(data: bytes) -> str:
    """The reference `data` is stored under."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _digest(ref: str) -> str:
    match = _REF.fullmatch(ref)
    if match is None:
        raise BlobError(f"not a blob reference: {ref!r} (expected sha256:<64 hex digits>)")
    return match.group(1)


class FileBlobStore:
    """Blobs as files `<root>/<2 hex>/<62 hex>`, written atomically (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:]

    async def put(self, data: bytes) -> str:
        ref = blob_ref(data)
        await asyncio.to_thread(self._write, _digest(ref), data)
        return ref

    async def get(self, ref: str) -> bytes:
        digest = _digest(ref)
        try:
            data = await asyncio.to_thread(self._path(digest).read_bytes)
        except FileNotFoundError:
            raise BlobError(f"no blob {ref}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobError(f"blob {ref} is corrupt: its bytes do not match the reference")
        return data

    def _write(self, digest: str, data: bytes) -> None:
        path = self._path(digest)
        if path.exists():
            return  # same address, same bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


class PostgresBlobStore:
    """Blobs in one PostgreSQL table, shared by every process of a cluster (a worker
    stores an output, the evaluator, other workers and the API read it back)."""

    _CREATE = "CREATE TABLE IF NOT EXISTS aob_blobs (ref text PRIMARY KEY, data bytea NOT NULL)"

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, *, max_size: int = 4) -> PostgresBlobStore:
        import asyncpg  # only cluster deployments need it loaded

        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=max_size, server_settings={"application_name": "aob-blobs"}
        )
        try:
            async with pool.acquire() as conn, conn.transaction():
                # Several services may start at once: serialise the creation.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('aob_blobs'))")
                await conn.execute(cls._CREATE)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def put(self, data: bytes) -> str:
        ref = blob_ref(data)
        await self._pool.execute(
            "INSERT INTO aob_blobs (ref, data) VALUES ($1, $2) ON CONFLICT (ref) DO NOTHING",
            ref,
            data,
        )
        return ref

    async def get(self, ref: str) -> bytes:
        digest = _digest(ref)
        data = await self._pool.fetchval("SELECT data FROM aob_blobs WHERE ref = $1", ref)
        if data is None:
            raise BlobError(f"no blob {ref}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobError(f"blob {ref} is corrupt: its bytes do not match the reference")
        return bytes(data)

    async def close(self) -> None:
        await self._pool.close()
