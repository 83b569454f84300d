"""The coordinator's changelog: run states kept in a compacted topic, so that a host
restores the runs of its partitions without folding their history again.

`aob.coordinator.state` has as many partitions as `aob.runs`, and its records are keyed
the same way, so partition p of one holds the states of the runs of partition p of the
other. Its records, appended in the same commit as the events the fold emitted and
the consumer offsets:

- a run's state after a batch changed it, keyed by run id: its snapshot
  (`aob.projections.coordinator.state.snapshot`) in an Avro envelope;
- an empty value (a tombstone) when the run finishes: compaction then forgets the run,
  in memory and in the topic;
- per partition, a position marker: the offset of `aob.runs` up to which its states
  were folded. A restore folds on from there (on an atomic log it equals the committed
  offset: nothing to fold again).

Nothing in a record depends on the clock or on the host: folding on from a restored
state makes the decisions, with the ids, that the live state made.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from aob.events.log.compaction import compact, create_compacted_topic
from aob.events.log.port import Append, EventLog
from aob.events.partitioner import partition_for
from aob.projections.coordinator.state import RunState, restore, snapshot

__all__ = [
    "CHANGELOG_TOPIC",
    "Restored",
    "compact_changelog",
    "create_changelog",
    "position_entry",
    "read_partition",
    "state_entry",
    "tombstone",
]

log = logging.getLogger(__name__)

CHANGELOG_TOPIC: Final = "aob.coordinator.state"
ENVELOPE_VERSION: Final = 1
_POSITION_KEY: Final = "__position__:{partition}:{salt}"
_READ_BATCH: Final = 1000

# A record is a run's state (`run`: its snapshot) or a position marker (`through`).
_ENVELOPE: Final = parse_schema(
    {
        "type": "record",
        "name": "CoordinatorChangelogEntry",
        "namespace": "aob.coordinator",
        "fields": [
            {"name": "version", "type": "int"},
            {"name": "through", "type": ["null", "long"], "default": None},
            {"name": "run", "type": ["null", "bytes"], "default": None},
        ],
    }
)


@dataclass(slots=True)
class Restored:
    """What one changelog partition holds: the live runs' states, the position of
    `aob.runs` they were folded up to (None: no marker yet), the records it took."""

    states: dict[str, RunState] = field(default_factory=dict)
    position: int | None = None
    records: int = 0


async def create_changelog(event_log: EventLog, partitions: int) -> None:
    """The changelog topic, compacted, with `partitions` (those of `aob.runs`)."""
    await create_compacted_topic(event_log, CHANGELOG_TOPIC, partitions)


async def compact_changelog(event_log: EventLog) -> int:
    """Forget superseded states and finished runs (embedded log; Kafka's broker
    compacts by itself); returns how many records went."""
    return await compact(event_log, CHANGELOG_TOPIC)


def state_entry(state: RunState) -> Append:
    """The changelog record of a live run's state (raises if it cannot be stored)."""
    return Append(CHANGELOG_TOPIC, state.run_id, _envelope(run=snapshot(state)))


def tombstone(run_id: str) -> Append:
    return Append(CHANGELOG_TOPIC, run_id, b"")


def position_entry(partition: int, partitions: int, through: int) -> Append:
    """The marker: partition `partition`'s states are folded up to offset `through`."""
    return Append(CHANGELOG_TOPIC, position_key(partition, partitions), _envelope(through=through))


def position_key(partition: int, partitions: int) -> str:
    """A key that lands in `partition` (of `partitions`): the first of a fixed sequence,
    so every host picks the same one and compaction keeps only the latest marker."""
    salt = 0
    while True:
        key = _POSITION_KEY.format(partition=partition, salt=salt)
        if partition_for(key, partitions) == partition:
            return key
        salt += 1


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
        restored.records += len(records)
        offset = records[-1].offset + 1
    for key, value in latest.items():
        if not value:
            continue  # a finished run
        entry = _read_envelope(value)
        if entry["through"] is not None:
            restored.position = entry["through"]
        elif entry["run"] is not None:
            _restore_run(restored, key, entry["run"])
    return restored


def _restore_run(restored: Restored, run_id: str, data: bytes) -> None:
    try:
        restored.states[run_id] = restore(data)
    except Exception as error:
        # Written by this code: only a bug (or a future version) gets here. The run is
        # lost to the coordinator; everything else restores.
        log.error("cannot restore run %s from the changelog: %s", run_id, error)


def _envelope(*, through: int | None = None, run: bytes | None = None) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, _ENVELOPE, {"version": ENVELOPE_VERSION, "through": through, "run": run})
    return out.getvalue()


def _read_envelope(data: bytes) -> dict[str, Any]:
    entry: Any = schemaless_reader(io.BytesIO(data), _ENVELOPE, None)
    if entry["version"] != ENVELOPE_VERSION:
        raise ValueError(f"changelog envelope version {entry['version']} is not {ENVELOPE_VERSION}")
    return dict(entry)
