"""Compacted topics: only the latest record of each key matters (Kafka's `cleanup.policy
=compact`), and a record with an empty value (a tombstone) deletes its key.

`create_compacted_topic` creates such a topic on any `EventLog`. On Kafka the broker's
log cleaner compacts it (the topic is configured for it, with segments that roll
often enough for the cleaner to get to them). The embedded SQLite log has no cleaner:
its owner calls `compact` from time to time, which deletes every record superseded by
a later one of the same key, and every tombstone but a partition's last record (kept
so that end offsets never move back when the file is opened again). Offsets stay as
they were: readers skip the gaps, as they do on a compacted Kafka topic.

Kept apart from the adapters: it reaches into them (the SQLite log's connection, the
Kafka log's bootstrap), through the wrappers (bounded, prefixed) that hide them.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import EventLog, LogError
from aob.events.log.sqlite import SqliteEventLog

__all__ = ["KAFKA_COMPACTION", "compact", "create_compacted_topic"]

# How Kafka keeps a compacted topic small: the cleaner only compacts closed segments,
# so they roll every 10 minutes (or 16 MiB); it cleans a partition once a tenth of it
# is superseded; tombstones stay 10 minutes after cleaning, long enough for a reader
# that started before the cleaning to see the delete.
KAFKA_COMPACTION: Final = {
    "cleanup.policy": "compact",
    "segment.ms": str(10 * 60 * 1000),
    "segment.bytes": str(16 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": str(10 * 60 * 1000),
}

# Every record of one topic but the latest of its key (the partition is part of the
# key's identity: a key lives in one partition anyway). Numbered newest first in one
# sorted pass: a NOT IN over (partition, key, MAX(offset)) took seconds for 10,000
# records (SQLite searched the row-value list linearly), 18% of the engine's CPU in
# bench/core.py's concurrent runs.
_SUPERSEDED: Final = """
DELETE FROM records WHERE topic = ?1 AND ("partition", "offset") IN (
    SELECT "partition", "offset" FROM (
        SELECT "partition", "offset", ROW_NUMBER() OVER (
            PARTITION BY "partition", key ORDER BY "offset" DESC
        ) AS newer
        FROM records WHERE topic = ?1
    )
    WHERE newer > 1
)
"""
_TOMBSTONES: Final = (
    'DELETE FROM records WHERE topic = ? AND "partition" = ? AND value = x\'\' AND "offset" < ?'
)


async def create_compacted_topic(event_log: EventLog, topic: str, partitions: int) -> None:
    """Create `topic` (if it does not exist) as a compacted topic; an existing Kafka
    topic is reconfigured for compaction (idempotent)."""
    await event_log.create_topic(topic, partitions)
    base, prefix = _unwrap(event_log)
    if isinstance(base, KafkaEventLog):
        await _configure_kafka(base.bootstrap, prefix + topic)


async def compact(event_log: EventLog, topic: str) -> int:
    """Delete the superseded records and the tombstones of `topic` on the embedded log;
    returns how many went. 0 on Kafka, whose broker compacts by itself."""
    base, prefix = _unwrap(event_log)
    if not isinstance(base, SqliteEventLog):
        return 0
    return _compact_sqlite(base, prefix + topic)


def _unwrap(event_log: Any) -> tuple[Any, str]:
    """The adapter under the wrappers, and the topic prefix they add."""
    prefix = ""
    while not isinstance(event_log, KafkaEventLog | SqliteEventLog):
        inner = getattr(event_log, "inner", None)
        if inner is None:
            return event_log, prefix
        prefix = getattr(event_log, "prefix", "") + prefix
        event_log = inner
    return event_log, prefix


def _compact_sqlite(event_log: SqliteEventLog, topic: str) -> int:
    # The log runs every statement on the loop's thread, between its group commits:
    # this one transaction cannot interleave with them.
    conn: sqlite3.Connection | None = event_log._conn
    if conn is None:
        raise LogError(f"event log {event_log.path} is closed")
    ends = event_log._ends.get(topic)
    if ends is None:
        return 0
    try:
        conn.execute("BEGIN IMMEDIATE")
        deleted = conn.execute(_SUPERSEDED, (topic,)).rowcount
        for partition, end in enumerate(ends):
            deleted += conn.execute(_TOMBSTONES, (topic, partition, end - 1)).rowcount
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise LogError(f"cannot compact {topic!r}: {exc}") from exc
    return deleted


async def _configure_kafka(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="aob-compaction")
    try:
        await admin.start()
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs=KAFKA_COMPACTION)
        responses = await admin.alter_configs([resource])
    except KafkaError as exc:
        raise LogError(f"cannot configure {topic!r} for compaction: {exc}") from exc
    finally:
        await admin.close()
    for response in responses:
        for code, message, *_ in response.resources:
            if code != 0:
                raise LogError(f"cannot configure {topic!r} for compaction: {message} ({code})")
