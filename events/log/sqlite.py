"""The embedded event log: Kafka's semantics on one SQLite file (WAL mode).

Design:

* One process owns the file. `open` takes an exclusive `flock` on `<file>.lock`; a
  second opener (another process, or a second `open` in this one) gets a `LogError`.
  The kernel drops the lock when the owner dies, even on kill -9. SQLite itself runs
  in `locking_mode=EXCLUSIVE` (no shared-memory index, fewer syscalls per commit), so
  other tools cannot read the file while the log is open either.
* Because it is the only writer, the log keeps topics and end offsets in memory and
  assigns dense offsets itself.
* All SQLite work runs on the event loop's thread, in short transactions: no thread
  handoffs, no lock contention. Appends and commits are *group committed*: callers
  within one loop tick are queued and written by one transaction, scheduled with
  `loop.call_soon`, so throughput grows with concurrency instead of paying a commit
  per caller.
* Followers wake per topic: `watch` resolves a future at the next append to one of
  its topics, so a consumer is not woken by appends to topics it does not read (the
  group members and the group-less `Consumer` use it; `wait_for_append` still wakes
  on any append). A followed topic's latest records stay in memory (`_TAIL_BYTES` in
  all), and reads that far behind the end, most reads, are served without a query.
* `append_and_commit` writes its records and the group's offsets in that same single
  transaction, which makes consume-process-produce loops exactly-once.
* Consumer groups (`join`): an in-process group coordinator (`aob.events.log.groups`)
  deals partitions to members with Kafka's eager protocol, with heartbeat and poll
  deadlines. Fencing: a member's commit carries an ownership check that the flush runs
  synchronously right before the transaction that would write it (nothing else runs
  on the loop in between): a member that lost a partition gets `Fenced`, and nothing
  of its commit is written.
* Durability: a transaction is in the WAL file before `append` returns. With
  `synchronous="NORMAL"` (default) that survives a crash of the process; with
  `"FULL"` the WAL is fsynced on every commit and survives power loss too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import itertools
import os
import re
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from aob.events.log.groups import EmbeddedGroups, EmbeddedMember
from aob.events.log.port import (
    POLL_TIMEOUT,
    SESSION_TIMEOUT,
    Append,
    Fenced,
    LogError,
    RebalanceListener,
    Record,
    TopicPartition,
    UnknownTopic,
)
from aob.events.partitioner import partition_for

__all__ = ["SqliteEventLog"]

_SCHEMA_VERSION: Final = 2
_SYNCHRONOUS_MODES: Final = frozenset({"NORMAL", "FULL", "EXTRA"})
_TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's rule
_TAIL_BYTES: Final = 8 * 1024 * 1024  # record values kept in memory for followers

# "partition", "offset" and "group" are SQL keywords: always quoted.
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL CHECK (partitions > 0)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    timestamp INTEGER NOT NULL,
    PRIMARY KEY (topic, "partition", "offset")
);
CREATE TABLE IF NOT EXISTS group_offsets (
    "group" TEXT NOT NULL,
    topic TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    done TEXT NOT NULL DEFAULT '',
    PRIMARY KEY ("group", topic, "partition")
) WITHOUT ROWID;
"""
# Schema 2: a commit names the records finished past its offset (`done_ahead`).
_MIGRATE_1_TO_2: Final = "ALTER TABLE group_offsets ADD COLUMN done TEXT NOT NULL DEFAULT ''"

_INSERT_RECORD: Final = (
    'INSERT INTO records (topic, "partition", "offset", key, value, timestamp) '
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_UPSERT_OFFSET: Final = (
    'INSERT INTO group_offsets ("group", topic, "partition", "offset", done) '
    "VALUES (?, ?, ?, ?, ?) "
    'ON CONFLICT ("group", topic, "partition") '
    'DO UPDATE SET "offset" = excluded."offset", done = excluded.done'
)
_READ: Final = (
    'SELECT "offset", key, value, timestamp FROM records '
    'WHERE topic = ? AND "partition" = ? AND "offset" >= ? ORDER BY "offset" LIMIT ?'
)

# (topic, partition, key, value) of an accepted, not yet written record.
_Row = tuple[str, int, str, bytes]
# (group, topic, partition, offset, done) of an accepted, not yet written commit.
_Commit = tuple[str, str, int, int, str]


@dataclass(slots=True)
class _Pending:
    """One caller's share of the next group-committed transaction."""

    rows: list[_Row]
    commits: list[_Commit]
    future: asyncio.Future[list[Record]]
    records: list[Record] = field(default_factory=list)
    # A group member's ownership check: False when it lost a partition it writes for.
    owner: Callable[[], bool] | None = None


class SqliteEventLog:
    """The embedded `EventLog`: one SQLite file, owned by one process.

    Create it with `await SqliteEventLog.open(path, synchronous="NORMAL")` and close it
    with `await log.close()` (or use it as an async context manager). Use it from one
    event loop; all methods must be awaited on that loop.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock_fd: int,
        path: Path,
        synchronous: str,
        topics: dict[str, int],
        end_offsets: dict[str, list[int]],
    ) -> None:
        """Internal: use `SqliteEventLog.open`."""
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        self._path = path
        self._synchronous = synchronous
        self._topics = topics
        self._ends = end_offsets
        self._pending: list[_Pending] = []
        self._flush_handle: asyncio.Handle | None = None
        self._appended = asyncio.Event()
        # Futures waiting for appends to one of their topics (`watch`): a wake-up per
        # consumer whose topics were written, not one per consumer per append.
        self._watchers: dict[str, set[asyncio.Future[None]]] = {}
        # The records appended last, per partition (dense offsets), read by followers
        # without a query: most reads are of what was just written. Like the active
        # segment of a Kafka partition, the tail is never compacted.
        self._tail: dict[tuple[str, int], collections.deque[Record]] = {}
        self._tail_order: collections.deque[tuple[str, int]] = collections.deque()
        self._tail_bytes = 0
        # Topics ever watched: every record of theirs from then on is in the tail (until
        # it is pushed out), so a tail's offsets have no gaps.
        self._followed: set[str] = set()
        self._groups = EmbeddedGroups(self)

    # --- lifecycle -------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "NORMAL") -> SqliteEventLog:
        """Open (creating if needed) the log stored in the SQLite file `path`.

        `synchronous` is SQLite's `PRAGMA synchronous` in WAL mode: "NORMAL" (no fsync
        per commit) survives a crash of the process, "FULL" (or "EXTRA") fsyncs every
        commit and also survives power loss. Raises `LogError` if the file is already
        open (this log is single-process) or is not a usable event log.
        """
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS_MODES)}")
        db_path = Path(path)
        lock_fd = _lock(db_path)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(db_path, isolation_level=None)
            conn.execute("PRAGMA locking_mode=EXCLUSIVE").fetchall()
            (journal_mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(journal_mode).lower() != "wal":
                raise LogError(f"{db_path} cannot use WAL mode (got {journal_mode!r})")
            conn.execute(f"PRAGMA synchronous={mode}")
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise LogError(
                    f"{db_path} has schema version {version}; this aob knows {_SCHEMA_VERSION}"
                )
            if version == 1:
                conn.execute(_MIGRATE_1_TO_2)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            conn.execute("COMMIT")
            topics = dict(conn.execute("SELECT name, partitions FROM topics").fetchall())
            ends = {
                topic: [_stored_end(conn, topic, p) for p in range(partitions)]
                for topic, partitions in topics.items()
            }
        except sqlite3.Error as exc:
            _close_quietly(conn, lock_fd)
            raise LogError(f"cannot open event log {db_path}: {exc}") from exc
        except BaseException:
            _close_quietly(conn, lock_fd)
            raise
        return cls(conn, lock_fd, db_path, mode, topics, ends)

    async def close(self) -> None:
        """Write what is queued, then release the file. Idempotent."""
        if self._conn is None:
            return
        self._groups.close()
        self._flush()
        conn, self._conn = self._conn, None
        try:
            conn.close()
        finally:
            os.close(self._lock_fd)
            self._appended.set()  # wake waiters: their next call reports the closed log
            for watchers in self._watchers.values():
                _wake_all(watchers)

    async def __aenter__(self) -> SqliteEventLog:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def synchronous(self) -> str:
        return self._synchronous

    # --- topics ------------------------------------------------------------------------

    async def create_topic(self, topic: str, partitions: int) -> None:
        conn = self._open_conn()
        if topic in self._topics:
            return
        if not _TOPIC_NAME.fullmatch(topic) or topic in {".", ".."}:
            raise LogError(f"invalid topic name {topic!r} (Kafka allows [A-Za-z0-9._-]{{1,249}})")
        if partitions <= 0:
            raise LogError(f"a topic needs at least one partition, got {partitions}")
        try:
            conn.execute(
                "INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, ?)",
                (topic, partitions),
            )
        except sqlite3.Error as exc:
            raise LogError(f"cannot create topic {topic!r}: {exc}") from exc
        self._topics[topic] = partitions
        self._ends[topic] = [0] * partitions

    async def partitions(self, topic: str) -> int:
        self._open_conn()
        return self._partitions(topic)

    # --- writes --------------------------------------------------------------------------

    async def append(self, records: Sequence[Append]) -> list[Record]:
        return await self._submit(self._rows(records), [])

    async def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        await self._submit([], self._commits(group, offsets))

    async def append_and_commit(
        self, records: Sequence[Append], group: str, offsets: Mapping[TopicPartition, int]
    ) -> list[Record]:
        # Validate everything before queueing: a bad commit appends nothing.
        rows = self._rows(records)
        return await self._submit(rows, self._commits(group, offsets))

    async def fenced_commit(
        self,
        records: Sequence[Append],
        group: str,
        offsets: Mapping[TopicPartition, int],
        owner: Callable[[], bool],
        done: Mapping[TopicPartition, str] | None = None,
    ) -> list[Record]:
        """`append_and_commit` for a group member: `owner()` is checked in the flush,
        right before the transaction; when it says False the caller gets `Fenced`.
        `done` is each offset's `done_ahead` text."""
        rows = self._rows(records)
        return await self._submit(rows, self._commits(group, offsets, done or {}), owner)

    async def join(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        session_timeout: float = SESSION_TIMEOUT,
        poll_timeout: float = POLL_TIMEOUT,
    ) -> EmbeddedMember:
        self._open_conn()
        return await self._groups.join(
            group, topics, listener, session_timeout=session_timeout, poll_timeout=poll_timeout
        )

    # --- reads ---------------------------------------------------------------------------

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 500
    ) -> list[Record]:
        conn = self._open_conn()
        self._check_partition(topic, partition)
        if offset < 0:
            raise LogError(f"cannot read {topic}[{partition}] from negative offset {offset}")
        if offset >= self._ends[topic][partition] or max_records <= 0:
            return []
        tail = self._tail.get((topic, partition))
        if tail and offset >= tail[0].offset:  # a follower right behind the end
            return _tail_read(tail, offset, max_records)
        try:
            rows = conn.execute(_READ, (topic, partition, offset, max_records)).fetchall()
        except sqlite3.Error as exc:
            raise LogError(f"cannot read {topic}[{partition}]: {exc}") from exc
        return [Record(topic, partition, off, key, value, ts) for off, key, value, ts in rows]

    async def end_offsets(self, topic: str) -> dict[int, int]:
        self._open_conn()
        self._partitions(topic)
        return dict(enumerate(self._ends[topic]))

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        stored = self._group_offsets(group, topic, '"offset"')
        return dict.fromkeys(range(self._partitions(topic)), 0) | stored

    async def committed_done(self, group: str, topic: str) -> dict[int, str]:
        """Per partition with a commit, the `done_ahead` text stored with its offset."""
        return self._group_offsets(group, topic, "done")

    def _group_offsets(self, group: str, topic: str, column: str) -> dict[int, Any]:
        """Per partition `group` committed for in `topic`, `column` of its commit."""
        conn = self._open_conn()
        self._partitions(topic)
        try:
            rows = conn.execute(
                f'SELECT "partition", {column} FROM group_offsets WHERE "group" = ? AND topic = ?',
                (group, topic),
            ).fetchall()
        except sqlite3.Error as exc:
            raise LogError(f"cannot read offsets of group {group!r}: {exc}") from exc
        return dict(rows)

    async def wait_for_append(self, timeout: float, topics: Collection[str] | None = None) -> None:
        self._open_conn()
        if topics is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._appended.wait()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        unwatch = self.watch(topics, waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await waiter
        finally:
            unwatch()

    def watch(self, topics: Iterable[str], waiter: asyncio.Future[None]) -> Callable[[], None]:
        """Resolve `waiter` at the next append to one of `topics` (or when the log
        closes); returns the function that stops watching."""
        names = tuple(topics)
        for topic in names:
            self._watchers.setdefault(topic, set()).add(waiter)
        self._followed.update(names)

        def unwatch() -> None:
            for topic in names:
                self._watchers.get(topic, set()).discard(waiter)

        return unwatch

    # --- internals -----------------------------------------------------------------------

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LogError(f"event log {self._path} is closed")
        return self._conn

    def _partitions(self, topic: str) -> int:
        try:
            return self._topics[topic]
        except KeyError:
            raise UnknownTopic(topic) from None

    def _check_partition(self, topic: str, partition: int) -> None:
        partitions = self._partitions(topic)
        if not 0 <= partition < partitions:
            raise LogError(f"topic {topic!r} has no partition {partition} (it has {partitions})")

    def _rows(self, records: Sequence[Append]) -> list[_Row]:
        topics = self._topics
        rows: list[_Row] = []
        for record in records:
            topic, key = record.topic, record.key
            partitions = topics.get(topic)
            if partitions is None:
                raise UnknownTopic(topic)
            rows.append((topic, partition_for(key, partitions), key, record.value))
        return rows

    def _commits(
        self,
        group: str,
        offsets: Mapping[TopicPartition, int],
        done: Mapping[TopicPartition, str] | None = None,
    ) -> list[_Commit]:
        commits: list[_Commit] = []
        for tp, offset in offsets.items():
            self._check_partition(tp.topic, tp.partition)
            if offset < 0:
                raise LogError(f"cannot commit negative offset {offset} for {tp}")
            commits.append((group, tp.topic, tp.partition, offset, (done or {}).get(tp, "")))
        return commits

    async def _submit(
        self, rows: list[_Row], commits: list[_Commit], owner: Callable[[], bool] | None = None
    ) -> list[Record]:
        self._open_conn()
        if not rows and not commits:
            if owner is not None and not owner():
                raise Fenced("this member no longer owns the partitions it commits for")
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Record]] = loop.create_future()
        self._pending.append(_Pending(rows, commits, future, owner=owner))
        if self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        return await future

    def _keep_tail(self, records: list[Record]) -> None:
        """Keep the latest records of followed topics (`_TAIL_BYTES` of them) for their
        followers, oldest out first."""
        tails, order = self._tail, self._tail_order
        followed = self._followed
        for record in records:
            if record.topic not in followed:
                continue  # nobody follows it (the changelog): read back, if ever, by query
            tp = (record.topic, record.partition)
            tail = tails.get(tp)
            if tail is None:
                tail = tails[tp] = collections.deque()
            tail.append(record)
            order.append(tp)
            self._tail_bytes += len(record.value)
        while self._tail_bytes > _TAIL_BYTES:
            oldest = tails[order.popleft()].popleft()
            self._tail_bytes -= len(oldest.value)

    def _flush(self) -> None:
        """Write every queued append and commit in one transaction, then resolve them."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        # A caller cancelled before its turn came is dropped: nothing of it is written.
        batch = [p for p in self._pending if not p.future.done()]
        self._pending = []
        # Fencing: ownership is checked here, with no await before the transaction.
        for pending in batch:
            if pending.owner is not None and not pending.owner():
                pending.future.set_exception(
                    Fenced("this member no longer owns the partitions it commits for")
                )
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        conn = self._conn
        if conn is None:  # pragma: no cover - close() flushes before it lets go
            _fail(batch, LogError(f"event log {self._path} is closed"))
            return
        timestamp = time.time_ns() // 1_000_000
        ends = self._ends
        advanced: dict[tuple[str, int], int] = {}
        inserts: list[tuple[str, int, int, str, bytes, int]] = []
        commits: list[_Commit] = []
        for pending in batch:
            out = pending.records
            for topic, partition, key, value in pending.rows:
                tp = (topic, partition)
                offset = advanced.get(tp)
                if offset is None:
                    offset = ends[topic][partition]
                advanced[tp] = offset + 1
                inserts.append((topic, partition, offset, key, value, timestamp))
                out.append(Record(topic, partition, offset, key, value, timestamp))
            commits.extend(pending.commits)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if inserts:
                conn.executemany(_INSERT_RECORD, inserts)
            if commits:
                conn.executemany(_UPSERT_OFFSET, commits)
            conn.execute("COMMIT")
        except Exception as exc:  # sqlite3.Error, or a value sqlite cannot bind
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            _fail(batch, LogError(f"cannot write to event log {self._path}: {exc}"))
            return
        for (topic, partition), end in advanced.items():
            ends[topic][partition] = end
        for pending in batch:
            pending.future.set_result(pending.records)
            self._keep_tail(pending.records)
        if inserts:
            self._appended.set()
            self._appended = asyncio.Event()
            for topic in {topic for topic, _ in advanced}:
                _wake_all(self._watchers.get(topic, ()))


def _tail_read(tail: collections.deque[Record], offset: int, max_records: int) -> list[Record]:
    """Up to `max_records` of `tail` from `offset` on (offsets are dense in a tail).
    Walked from the end: followers read close to it, and a deque is a linked list, so
    skipping the records before `offset` from the start took most of a read."""
    behind = tail[-1].offset + 1 - offset  # records from `offset` to the end
    records = list(itertools.islice(reversed(tail), max(0, behind - max_records), behind))
    records.reverse()
    return records


def _lock(path: Path) -> int:
    """Take the single-process lock of the log at `path`; returns the lock's fd."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LogError(f"cannot open lock file {lock_path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise LogError(
            f"event log {path} is already open (lock {lock_path} is held); the embedded "
            "log is single-process: use one process, or the Kafka adapter"
        ) from exc
    return fd


def _stored_end(conn: sqlite3.Connection, topic: str, partition: int) -> int:
    row = conn.execute(
        'SELECT MAX("offset") FROM records WHERE topic = ? AND "partition" = ?',
        (topic, partition),
    ).fetchone()
    return 0 if row[0] is None else int(row[0]) + 1


def _close_quietly(conn: sqlite3.Connection | None, lock_fd: int) -> None:
    try:
        if conn is not None:
            conn.close()
    finally:
        os.close(lock_fd)


def _wake_all(waiters: Iterable[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


def _fail(batch: list[_Pending], error: LogError) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)
