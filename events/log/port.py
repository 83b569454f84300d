"""The event log port: Kafka's semantics, whatever stores the bytes.

Topics have a fixed number of partitions; a record's partition is chosen from its
key with Kafka's default partitioner (murmur2), so one key's records are totally
ordered in one partition and land in the same partition number as on Kafka.
Offsets are per partition, dense from 0. Consumer groups commit the offset of the
next record to read, per partition.

Adapters: `aob.events.log.sqlite` (embedded default) and, in cluster mode, Kafka.
Every adapter passes the same conformance suite (`tests/conformance/test_log_port.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class LogError(Exception):
    """Base of every error an event log adapter raises."""


class UnknownTopic(LogError):
    pass


@dataclass(frozen=True, slots=True)
class TopicPartition:
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Append:
    """A record to append. The adapter picks the partition from the key."""

    topic: str
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    timestamp: int  # epoch ms when the log stored it

    @property
    def position(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class EventLog(Protocol):
    """A partitioned, append-only log with consumer-group offsets."""

    async def create_topic(self, topic: str, partitions: int) -> None:
        """Create `topic` if it does not exist (existing topics are left as they are)."""

    async def partitions(self, topic: str) -> int:
        """Number of partitions of `topic`; raises UnknownTopic."""

    async def append(self, records: Sequence[Append]) -> list[Record]:
        """Append records durably, in order; returns them with their positions.

        Returns only once the records survive a crash of this process.
        """

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 500
    ) -> list[Record]:
        """Records of one partition from `offset` on (empty at the end)."""

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next appended record will get."""

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """Per partition, the group's committed offset (0 where none)."""

    async def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Store the group's next offsets to read."""

    async def append_and_commit(
        self, records: Sequence[Append], group: str, offsets: Mapping[TopicPartition, int]
    ) -> list[Record]:
        """Append `records` and commit `offsets` for `group`.

        Atomic where the store allows it (embedded); otherwise the records are
        appended first and the offsets committed after (at-least-once).
        """

    async def wait_for_append(self, timeout: float) -> None:
        """Return when new records may have been appended, or after `timeout` s."""

    async def close(self) -> None: ...
