"""Replay for audit: the log is the source of truth, and this checks it.

- `run_history`: a run's every event, read straight from the log (not the read
  models), in the shape of the read models' timeline rows; duplicates included.
- `verify`: rebuilds every read model from offset 0 into a fresh store, up to the
  positions the live store has reached, and compares the two table by table. Equal
  is the contract of the projection (idempotent, deterministic, batching-blind);
  anything else is a bug or a tampered store, and the summary says where. It also
  folds aob.runs again from offset 0 up to the coordinator's committed offsets and
  compares what the fold emits with what the log recorded (`fold_divergences`): a
  fold that now decides differently (a code change) is reported by run and event.

Poison is part of the log: a record that cannot be decoded, or that the store refuses,
was set aside by the live projector (a dead letter, and its run's `RunFailed`, which is
in the log after it). The rebuild sets it aside the same way, so the two stores still
agree, and says what it skipped: a poison record never makes an audit fail or diverge.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from aob.events.codec import decode
from aob.events.log.port import EventLog, Record, TopicPartition, UnknownTopic
from aob.events.partitioner import partition_for
from aob.events.types import DEADLETTER_TOPIC, RUNS_TOPIC, Event
from aob.platform.settings import Settings
from aob.projections.readmodels.port import AsyncReadModels, ThreadedReadModels
from aob.projections.readmodels.postgres import PostgresReadModels
from aob.projections.readmodels.views import dumps, loads
from aob.projections.runtime.coordinator import GROUP as COORDINATOR
from aob.projections.runtime.deadletter import UNDECODABLE, dead_letter_id, describe
from aob.projections.runtime.divergence import Divergence, audit_partition
from aob.projections.runtime.inline import Inline
from aob.projections.runtime.projector import GROUP as PROJECTOR
from aob.projections.runtime.projector import PROJECTED_TOPICS

READ_BATCH = 1000
SHOWN_DIFFERENCES = 5  # rows named per table in a summary

# --- history ------------------------------------------------------------------------


async def run_history(event_log: EventLog, run_id: str) -> list[dict[str, Any]]:
    """Every event of `run_id` on `aob.runs`, in log order, from offset 0."""
    partition = partition_for(run_id, await event_log.partitions(RUNS_TOPIC))
    end = (await event_log.end_offsets(RUNS_TOPIC)).get(partition, 0)
    events: list[dict[str, Any]] = []
    offset = 0
    while offset < end:
        records = await event_log.read(RUNS_TOPIC, partition, offset, READ_BATCH)
        if not records:
            break
        events += [history_row(r) for r in records if r.key == run_id and r.offset < end]
        offset = records[-1].offset + 1
    return events


def history_row(record: Record) -> dict[str, Any]:
    """A log record as the read models' timeline shows it; one that cannot be decoded
    (set aside by the services) as an "undecodable record" row saying why."""
    try:
        event = decode(record.value)
    except Exception as error:
        return poison_row(record, describe(error))
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "event_id": event.event_id,
        "key": event.key,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "actor": event.actor,
        "trace_id": event.trace_id,
        "causation_id": event.causation_id,
        "data": loads(dumps(asdict(event.payload))),
    }


def poison_row(record: Record, reason: str) -> dict[str, Any]:
    """An undecodable record in the shape of a history row: where it is and why."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "event_id": None,
        "key": record.key,
        "type": UNDECODABLE,
        "occurred_at": None,
        "actor": None,
        "trace_id": None,
        "causation_id": None,
        "data": {"reason": reason, "bytes": len(record.value)},
    }


# --- verification ---------------------------------------------------------------------


Dump = dict[str, list[tuple[Any, ...]]]


@dataclass
class TableDiff:
    live_rows: int
    rebuilt_rows: int
    only_live: list[tuple[Any, ...]] = field(default_factory=list)
    only_rebuilt: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass(frozen=True)
class SetAside:
    """A poison record the rebuild did not apply, as the live projector did not."""

    topic: str
    partition: int
    offset: int
    reason: str
    letter_id: str  # the id of the dead letter the live projector writes for it
    # That dead letter is in the log: the projector set the record aside live too.
    dead_lettered: bool = False

    def describe(self) -> str:
        known = "dead-lettered by the projector" if self.dead_lettered else "no dead letter"
        return f"{self.topic}[{self.partition}]@{self.offset} ({self.reason}; {known})"


@dataclass
class Rebuilt:
    """What `rebuild` did: records applied, and poison set aside."""

    applied: int = 0
    set_aside: list[SetAside] = field(default_factory=list)


@dataclass
class Verification:
    """The outcome of `verify`: `equal`, else what differs per table."""

    positions: dict[TopicPartition, int]
    applied: int
    tables: dict[str, int]  # rows per table in the live store
    differences: dict[str, TableDiff]
    set_aside: list[SetAside] = field(default_factory=list)
    # Per partition of aob.runs, where the current fold first departs from the log.
    diverged: list[Divergence] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.differences and not self.diverged

    def summary(self) -> str:
        reached = ", ".join(f"{tp.topic}[{tp.partition}]@{o}" for tp, o in self.positions.items())
        head = (
            f"rebuilt {len(self.tables)} tables from {self.applied} events "
            f"(up to {reached or 'nothing'})"
        )
        skipped = [
            f"set aside {len(self.set_aside)} poison record(s), as the live projector does:",
            *(f"  {record.describe()}" for record in self.set_aside),
        ]
        if not self.set_aside:
            skipped = []
        diverged = [
            f"the fold diverges from the log in {len(self.diverged)} partition(s) of "
            f"{RUNS_TOPIC} (the code folding it decides differently now):",
            *(f"  {divergence}" for divergence in self.diverged),
        ]
        if not self.diverged:
            diverged = []
        if not self.differences:
            return "\n".join([f"{head}: identical to the live read models", *skipped, *diverged])
        lines = [f"{head}: {len(self.differences)} table(s) differ"]
        for table, diff in self.differences.items():
            lines.append(
                f"  {table}: {diff.live_rows} live rows, {diff.rebuilt_rows} rebuilt; "
                f"{len(diff.only_live)} only live, {len(diff.only_rebuilt)} only rebuilt"
            )
            lines += [f"    live only:    {row!r:.200}" for row in diff.only_live]
            lines += [f"    rebuilt only: {row!r:.200}" for row in diff.only_rebuilt]
        return "\n".join(lines + skipped + diverged)


async def verify(
    event_log: EventLog,
    live: AsyncReadModels,
    fresh: AsyncReadModels,
    inline: Inline | None = None,
) -> Verification:
    """Rebuild `fresh` (an empty store) from the log up to `live`'s positions and compare.

    The live store may move on meanwhile: its dump is one consistent snapshot, and
    the rebuild stops at the positions recorded in that snapshot.
    """
    live_dump = await live.dump()
    positions = stored_positions(live_dump)
    rebuilt = await rebuild(event_log, fresh, positions)
    rebuilt_dump = await fresh.dump()
    return Verification(
        positions=positions,
        applied=rebuilt.applied,
        tables={table: len(rows) for table, rows in live_dump.items()},
        differences=compare(live_dump, rebuilt_dump),
        set_aside=await with_dead_letters(event_log, rebuilt.set_aside),
        diverged=await fold_divergences(event_log, inline),
    )


async def fold_divergences(event_log: EventLog, inline: Inline | None = None) -> list[Divergence]:
    """Each partition of aob.runs folded again from offset 0 up to the coordinator's
    committed offset, as its host folds it (`inline`: the work it decides in process);
    where what the fold emits first differs from what the log recorded (none: the fold
    still makes the recorded decisions)."""
    try:
        committed = await event_log.committed(COORDINATOR, RUNS_TOPIC)
        partitions = await event_log.partitions(RUNS_TOPIC)
    except UnknownTopic:
        return []
    found: list[Divergence] = []
    for partition in range(partitions):
        tp = TopicPartition(RUNS_TOPIC, partition)
        end = committed.get(partition, 0)
        divergence = await audit_partition(
            event_log, tp, end, set_aside_by=f"service:{COORDINATOR}", inline=inline
        )
        if divergence is not None:
            found.append(divergence)
    return found


def stored_positions(dump: Dump) -> dict[TopicPartition, int]:
    """The projector's positions recorded in a dump (`projector_offsets` rows)."""
    return {
        TopicPartition(topic, partition): next_offset
        for topic, partition, next_offset in sorted(dump.get("projector_offsets", []))
    }


async def rebuild(
    event_log: EventLog, store: AsyncReadModels, positions: Mapping[TopicPartition, int]
) -> Rebuilt:
    """Apply every projected record before `positions` to `store`, reading the
    partitions in turn as the projector does; poison is set aside as the projector
    sets it aside (see `ProjectorHost._apply`), and listed."""
    next_read = {tp: 0 for tp in positions if tp.topic in PROJECTED_TOPICS}
    rebuilt = Rebuilt()
    while next_read:
        records: list[Record] = []
        for tp, offset in list(next_read.items()):
            wanted = min(READ_BATCH, positions[tp] - offset)
            read = await event_log.read(tp.topic, tp.partition, offset, wanted)
            read = [r for r in read if r.offset < positions[tp]]
            if not read:
                del next_read[tp]
                continue
            next_read[tp] = read[-1].offset + 1
            if next_read[tp] >= positions[tp]:
                del next_read[tp]
            records += read
        if records:
            await _apply(store, records, rebuilt)
    # As the projector does: its positions also step over what projects nothing (poison
    # set aside, Kafka's transaction markers), so the rebuild's end where the live one is.
    await store.advance({tp: at for tp, at in positions.items() if tp.topic in PROJECTED_TOPICS})
    return rebuilt


async def _apply(store: AsyncReadModels, records: list[Record], rebuilt: Rebuilt) -> None:
    """Apply decodable records as one batch; if the store refuses it, one by one,
    setting aside each it refuses (each apply is one transaction: nothing half-done)."""
    batch: list[tuple[Record, Event]] = []
    for record in records:
        try:
            batch.append((record, decode(record.value)))
        except Exception as error:
            rebuilt.set_aside.append(_set_aside(record, f"{UNDECODABLE}: {describe(error)}"))
    try:
        await store.apply(batch)
    except Exception:
        await store.offsets()  # raises when the store is down: not a record's fault
        await _apply_one_by_one(store, batch, rebuilt)
        return
    rebuilt.applied += len(batch)


async def _apply_one_by_one(
    store: AsyncReadModels, batch: list[tuple[Record, Event]], rebuilt: Rebuilt
) -> None:
    for record, event in batch:
        try:
            await store.apply([(record, event)])
        except Exception as error:
            await store.offsets()  # the store went down meanwhile: raise that
            reason = f"cannot project {event.type}: {describe(error)}"
            rebuilt.set_aside.append(_set_aside(record, reason))
            continue
        rebuilt.applied += 1


def _set_aside(record: Record, reason: str) -> SetAside:
    letter_id = dead_letter_id(PROJECTOR, record)
    return SetAside(record.topic, record.partition, record.offset, reason, letter_id)


async def with_dead_letters(event_log: EventLog, set_aside: list[SetAside]) -> list[SetAside]:
    """`set_aside`, each marked with whether the live projector's dead letter for it is
    in the log (read only when something was set aside: the topic is small)."""
    if not set_aside:
        return []
    letters = await dead_letter_ids(event_log)
    return [
        dataclasses.replace(skipped, dead_lettered=skipped.letter_id in letters)
        for skipped in sorted(set_aside, key=lambda r: (r.topic, r.partition, r.offset))
    ]


async def dead_letter_ids(event_log: EventLog) -> set[str]:
    """The ids of every dead letter in the log (an undecodable one counts as none)."""
    ids: set[str] = set()
    try:
        ends = await event_log.end_offsets(DEADLETTER_TOPIC)
    except UnknownTopic:  # a log older than dead letters
        return ids
    for partition, end in ends.items():
        offset = 0
        while offset < end:
            records = await event_log.read(DEADLETTER_TOPIC, partition, offset, READ_BATCH)
            if not records:
                break
            for record in records:
                with contextlib.suppress(Exception):
                    ids.add(decode(record.value).event_id)
            offset = records[-1].offset + 1
    return ids


def compare(live: Dump, rebuilt: Dump) -> dict[str, TableDiff]:
    """Tables whose rows differ, with a few rows found on one side only."""
    differences: dict[str, TableDiff] = {}
    for table in sorted(set(live) | set(rebuilt)):
        ours, theirs = live.get(table, []), rebuilt.get(table, [])
        if ours == theirs:
            continue
        rebuilt_set, live_set = set(map(_hashable, theirs)), set(map(_hashable, ours))
        differences[table] = TableDiff(
            live_rows=len(ours),
            rebuilt_rows=len(theirs),
            only_live=[r for r in ours if _hashable(r) not in rebuilt_set][:SHOWN_DIFFERENCES],
            only_rebuilt=[r for r in theirs if _hashable(r) not in live_set][:SHOWN_DIFFERENCES],
        )
    return differences


def _hashable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(repr(v) if isinstance(v, dict | list) else v for v in row)


# --- fresh stores -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fresh_read_models(
    settings: Settings, *, keep: bool = False
) -> AsyncIterator[tuple[AsyncReadModels, str]]:
    """An empty store of the kind the settings use, and where it is: a new schema in the
    live database, or a new SQLite file. Dropped afterwards unless `keep`."""
    if settings.database_url is None:
        with tempfile.TemporaryDirectory(prefix="aob-verify-") as scratch:
            path = Path(scratch) / "readmodels.db"
            store = await ThreadedReadModels.open(path)
            try:
                yield store, str(path)
            finally:
                await store.close()
        return
    dsn = settings.database_url.get_secret_value()
    schema = f"aob_verify_{uuid.uuid4().hex[:12]}"
    await _execute(dsn, f'CREATE SCHEMA "{schema}"')
    try:
        pg_store = await PostgresReadModels.open(with_search_path(dsn, schema), max_size=2)
        try:
            yield pg_store, f"schema {schema}"
        finally:
            await pg_store.close()
    finally:
        if not keep:
            await _execute(dsn, f'DROP SCHEMA "{schema}" CASCADE')


def with_search_path(dsn: str, schema: str) -> str:
    """`dsn` naming `schema` first in its search path (asyncpg passes the parameter on)."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    query.append(("search_path", schema))
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _execute(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
