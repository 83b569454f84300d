"""The coordinator's changelog: run states kept in a compacted topic, so that a host
restores the runs of its partitions without folding their history again.

`aob.coordinator.state` has as many partitions as `aob.runs`, and every record of a run
lands in the partition of its run (partition p of one holds the states of the runs of
partition p of the other). Its records, appended in the same commit as the events the
fold emitted and the consumer offsets:

- a run's state in parts (`aob.projections.coordinator.state`), each under its own key,
  each written only when it changes, so what a batch writes follows what it changed,
  not the run's size:
  - `<run>`: the core (statuses, counters, timers, awaited verdicts, recent history),
    after every batch that changed the run;
  - `<run>/s`: the submission (base definition, inputs), once;
  - `<run>/d`: the materialized definition, when a patch changes it;
  - `<run>/o/<node>`: a node's output, when it lands;
  - `<run>/h/<n>`: the n-th sealed chunk of history (event ids seen, verdicts), once
    the core's recent history reaches `SEAL_AT` entries;
  A part's key carries a suffix chosen so that Kafka's partitioner puts it in its run's
  partition (`landing_key`).
- empty values (tombstones) for every key of a run when it finishes: compaction then
  forgets the run, in memory and in the topic;
- per partition, a position marker: the offset of `aob.runs` up to which its states
  were folded. A restore folds on from there (on an atomic log it equals the committed
  offset: nothing to fold again).

Nothing in a record depends on the clock or on the host: folding on from a restored
state makes the decisions, with the ids, that the live state made.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from aob.events.log.compaction import compact, create_compacted_topic
from aob.events.log.port import Append, EventLog
from aob.events.partitioner import partition_for
from aob.projections.coordinator.state import (
    RunState,
    StoredParts,
    assemble,
    core_snapshot,
    definition_snapshot,
    history_snapshot,
    output_snapshot,
    restore,
    submission_snapshot,
)

__all__ = [
    "CHANGELOG_TOPIC",
    "SEAL_AT",
    "Restored",
    "RunRecord",
    "compact_changelog",
    "create_changelog",
    "landing_key",
    "position_entry",
    "read_partition",
    "run_entries",
    "tombstones",
]

log = logging.getLogger(__name__)

CHANGELOG_TOPIC: Final = "aob.coordinator.state"
ENVELOPE_VERSION: Final = 2  # 2: states in parts (1: one whole snapshot per run)
# History entries (event ids, verdicts) the core carries before they are sealed in a
# chunk of their own: bounds the core, and keeps chunk keys few.
SEAL_AT: Final = 64
_POSITION_KEY: Final = "__position__:{partition}:{salt}"
_READ_BATCH: Final = 1000

_PART: Final = {
    "type": "record",
    "name": "RunPart",
    "fields": [
        {"name": "run_id", "type": "string"},
        {"name": "kind", "type": "string"},  # s, d, o, h (see the module doc)
        {"name": "name", "type": "string"},  # the node of an output, a chunk's index
        {"name": "data", "type": "bytes"},
    ],
}
# A record is a run's core (`run`), one of its parts (`part`) or a marker (`through`).
_ENVELOPE: Final = parse_schema(
    {
        "type": "record",
        "name": "CoordinatorChangelogEntry",
        "namespace": "aob.coordinator",
        "fields": [
            {"name": "version", "type": "int"},
            {"name": "through", "type": ["null", "long"], "default": None},
            {"name": "run", "type": ["null", "bytes"], "default": None},
            {"name": "part", "type": ["null", _PART], "default": None},
        ],
    }
)
# Version 1 envelopes lack `part` (their `run` is a whole snapshot).
_ENVELOPE_V1: Final = parse_schema(
    {
        "type": "record",
        "name": "CoordinatorChangelogEntryV1",
        "namespace": "aob.coordinator",
        "fields": [
            {"name": "version", "type": "int"},
            {"name": "through", "type": ["null", "long"], "default": None},
            {"name": "run", "type": ["null", "bytes"], "default": None},
        ],
    }
)
_VERSION: Final = parse_schema(
    {"type": "record", "name": "Version", "fields": [{"name": "version", "type": "int"}]}
)


@dataclass(slots=True)
class RunRecord:
    """What the changelog holds of one live run, so a batch writes only what changed.

    `recent_seen` and `recent_verdicts` are the history the core carries (not sealed
    yet); `seen_base` counts the event ids sealed before them. The host adds the ids of
    the events it folds (`note_seen`); a count that does not add up (the fold marking
    ids some other way) seals the whole set again, which a restore's union absorbs.
    """

    keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> key
    core_written: bool = False
    submitted: bool = False
    revision: int = 0
    outputs: dict[str, tuple[Any, str | None]] = field(default_factory=dict)  # as written
    sealed: int = 0
    seen_base: int = 0
    recent_seen: list[str] = field(default_factory=list)
    recent_verdicts: dict[str, bool] = field(default_factory=dict)
    verdicts_covered: int = 0

    def note_seen(self, event_ids: list[str]) -> None:
        self.recent_seen.extend(event_ids)

    @property
    def written(self) -> bool:
        return self.core_written or bool(self.keys)


@dataclass(slots=True)
class Restored:
    """What one changelog partition holds: the live runs' states and records, the
    position of `aob.runs` they were folded up to (None: no marker yet), the records
    it took."""

    states: dict[str, RunState] = field(default_factory=dict)
    records: dict[str, RunRecord] = field(default_factory=dict)
    position: int | None = None
    read: int = 0


async def create_changelog(event_log: EventLog, partitions: int) -> None:
    """The changelog topic, compacted, with `partitions` (those of `aob.runs`)."""
    await create_compacted_topic(event_log, CHANGELOG_TOPIC, partitions)


async def compact_changelog(event_log: EventLog) -> int:
    """Forget superseded states and finished runs (embedded log; Kafka's broker
    compacts by itself); returns how many records went."""
    return await compact(event_log, CHANGELOG_TOPIC)


# --- writing ------------------------------------------------------------------------------


def run_entries(state: RunState, record: RunRecord, partitions: int) -> list[Append]:
    """The changelog records of what changed in `state` since `record` (which they
    update): new parts, then the core. Raises if a part cannot be encoded."""
    entries: list[Append] = []
    run_id = state.run_id

    def part(kind: str, name: str, data: bytes) -> None:
        key = record.keys.get((kind, name))
        if key is None:
            key = landing_key(
                f"{run_id}/{kind}/{name}", partition_for(run_id, partitions), partitions
            )
        entries.append(Append(CHANGELOG_TOPIC, key, _envelope(part=(run_id, kind, name, data))))
        record.keys[(kind, name)] = key

    if not record.submitted:
        part("s", "", submission_snapshot(state))
    if state.revision != record.revision:
        part("d", "", definition_snapshot(state))
    for node_id, output in state.outputs.items():
        ref = state.output_refs.get(node_id)
        written = record.outputs.get(node_id)
        if written is None or written[0] is not output or written[1] != ref:
            part("o", node_id, output_snapshot(state, node_id))
    seal = _history(state, record)
    if seal is not None:
        part("h", str(record.sealed), history_snapshot(*seal))
        record.sealed += 1
        record.seen_base += len(record.recent_seen)
        record.recent_seen, record.recent_verdicts = [], {}
    core = core_snapshot(state, record.recent_seen, record.recent_verdicts)
    entries.append(Append(CHANGELOG_TOPIC, run_id, _envelope(run=core)))
    _written(state, record)
    return entries


def _history(state: RunState, record: RunRecord) -> tuple[list[str], dict[str, bool]] | None:
    """The chunk of history to seal now, if any (the record's recent history is
    brought up to date first)."""
    if len(state.verdicts) > record.verdicts_covered:
        fresh = itertools.islice(state.verdicts.items(), record.verdicts_covered, None)
        record.recent_verdicts.update(fresh)
    if len(state.seen) != record.seen_base + len(record.recent_seen):
        # Ids the record did not hear of: seal them all (a union on restore).
        record.recent_seen = sorted(state.seen)
        record.seen_base = 0
        return record.recent_seen, record.recent_verdicts
    if len(record.recent_seen) + len(record.recent_verdicts) >= SEAL_AT:
        return record.recent_seen, record.recent_verdicts
    return None


def _written(state: RunState, record: RunRecord) -> None:
    record.core_written = True
    record.submitted = True
    record.revision = state.revision
    refs = state.output_refs
    record.outputs = {n: (output, refs.get(n)) for n, output in state.outputs.items()}
    record.verdicts_covered = len(state.verdicts)


def tombstones(run_id: str, record: RunRecord) -> list[Append]:
    """Empty values for every key the run wrote: compaction forgets them all."""
    keys = ([run_id] if record.core_written else []) + sorted(record.keys.values())
    return [Append(CHANGELOG_TOPIC, key, b"") for key in keys]


def position_entry(partition: int, partitions: int, through: int) -> Append:
    """The marker: partition `partition`'s states are folded up to offset `through`."""
    return Append(CHANGELOG_TOPIC, position_key(partition, partitions), _envelope(through=through))


@functools.cache  # every batch writes a marker; the search tries many keys
def position_key(partition: int, partitions: int) -> str:
    """A key that lands in `partition` (of `partitions`): the first of a fixed sequence,
    so every host picks the same one and compaction keeps only the latest marker."""
    salt = 0
    while True:
        key = _POSITION_KEY.format(partition=partition, salt=salt)
        if partition_for(key, partitions) == partition:
            return key
        salt += 1


# Kafka's murmur2 (`aob.events.partitioner`), cut in two: the key's prefix is hashed
# once, then only its last 4-byte block per candidate suffix. Trying whole keys costs
# twice as much, and a run's parts are written in the hot path.
_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def _mix(h: int, block: bytes) -> int:
    k = (int.from_bytes(block, "little") * _M) & _MASK
    k ^= k >> 24
    k = (k * _M) & _MASK
    return ((h * _M) & _MASK) ^ k


def landing_key(base: str, partition: int, partitions: int) -> str:
    """`base`, padded with '#' to whole 4-byte blocks, then the first 4-hex-digit
    suffix with which Kafka's default partitioner puts the key in `partition`."""
    prefix = (base + "#").encode()
    prefix += b"#" * (-len(prefix) % 4)
    h = (_SEED ^ (len(prefix) + 4)) & _MASK
    for start in range(0, len(prefix), 4):
        h = _mix(h, prefix[start : start + 4])
    for salt in range(1 << 16):
        block = b"%04x" % salt
        f = _mix(h, block)
        f ^= f >> 13
        f = (f * _M) & _MASK
        f ^= f >> 15
        if (f & 0x7FFFFFFF) % partitions == partition:
            return (prefix + block).decode()
    raise ValueError(f"no key suffix lands {base!r} in partition {partition} of {partitions}")


# --- reading ------------------------------------------------------------------------------


async def read_partition(event_log: EventLog, partition: int) -> Restored:
    """Read one changelog partition from its start: the latest record of each key wins."""
    restored = Restored()
    latest: dict[str, bytes] = {}
    offset = 0
    while True:
        records = await event_log.read(CHANGELOG_TOPIC, partition, offset, _READ_BATCH)
        if not records:
            break
        for record in records:
            latest[record.key] = record.value
        restored.read += len(records)
        offset = records[-1].offset + 1
    parts: dict[str, StoredParts] = {}
    keys: dict[str, dict[tuple[str, str], str]] = {}
    whole: dict[str, bytes] = {}  # version 1 snapshots
    for key, value in latest.items():
        if not value:
            continue  # a finished run's
        entry = _read_envelope(value)
        if entry["through"] is not None:
            restored.position = entry["through"]
        elif entry.get("part") is not None:
            run_id, kind, name = (
                entry["part"]["run_id"],
                entry["part"]["kind"],
                entry["part"]["name"],
            )
            _add_part(parts.setdefault(run_id, StoredParts()), kind, name, entry["part"]["data"])
            keys.setdefault(run_id, {})[(kind, name)] = key
        elif entry["version"] == 1:
            whole[key] = entry["run"]
        elif entry["run"] is not None:
            parts.setdefault(key, StoredParts()).core = entry["run"]
    for run_id, stored in parts.items():
        if stored.core is not None:
            _restore_run(restored, run_id, stored, keys.get(run_id, {}))
        # Parts without a core: a run whose tombstones compaction has half applied.
    for run_id, data in whole.items():
        if run_id not in restored.states:
            _restore_whole(restored, run_id, data)
    return restored


def _add_part(stored: StoredParts, kind: str, name: str, data: bytes) -> None:
    if kind == "s":
        stored.submission = data
    elif kind == "d":
        stored.definition = data
    elif kind == "o":
        stored.outputs[name] = data
    elif kind == "h":
        stored.history[int(name)] = data


def _restore_run(
    restored: Restored, run_id: str, stored: StoredParts, keys: dict[tuple[str, str], str]
) -> None:
    try:
        state = assemble(stored)
    except Exception as error:
        # Written by this code: only a bug (or a future version) gets here. The run is
        # lost to the coordinator; everything else restores.
        log.error("cannot restore run %s from the changelog: %s", run_id, error)
        return
    core = _core_history(stored.core)
    refs = state.output_refs
    restored.states[run_id] = state
    restored.records[run_id] = RunRecord(
        keys=keys,
        core_written=True,
        submitted=True,
        revision=state.revision,
        outputs={n: (output, refs.get(n)) for n, output in state.outputs.items()},
        sealed=1 + max(stored.history, default=-1),
        seen_base=len(state.seen) - len(core[0]),
        recent_seen=core[0],
        recent_verdicts=core[1],
        verdicts_covered=len(state.verdicts),
    )


def _core_history(core: bytes | None) -> tuple[list[str], dict[str, bool]]:
    document = json.loads(core or b"{}")
    return list(document.get("seen", [])), dict(document.get("verdicts", {}))


def _restore_whole(restored: Restored, run_id: str, data: bytes) -> None:
    """A version 1 record: the whole state. Its parts are written at its next batch."""
    try:
        state = restore(data)
    except Exception as error:
        log.error("cannot restore run %s from the changelog: %s", run_id, error)
        return
    restored.states[run_id] = state
    restored.records[run_id] = RunRecord(core_written=True)


def _envelope(
    *,
    through: int | None = None,
    run: bytes | None = None,
    part: tuple[str, str, str, bytes] | None = None,
) -> bytes:
    out = io.BytesIO()
    fields = None
    if part is not None:
        fields = dict(zip(("run_id", "kind", "name", "data"), part, strict=True))
    document = {"version": ENVELOPE_VERSION, "through": through, "run": run, "part": fields}
    schemaless_writer(out, _ENVELOPE, document)
    return out.getvalue()


def _read_envelope(data: bytes) -> dict[str, Any]:
    version = schemaless_reader(io.BytesIO(data), _VERSION, None)["version"]  # type: ignore[call-overload,index]
    if version == 1:
        schema = _ENVELOPE_V1
    elif version == ENVELOPE_VERSION:
        schema = _ENVELOPE
    else:
        raise ValueError(f"changelog envelope version {version} is not {ENVELOPE_VERSION}")
    entry: Any = schemaless_reader(io.BytesIO(data), schema, None)
    return dict(entry)
