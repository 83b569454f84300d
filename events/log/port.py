"""The event log port: Kafka's semantics, whatever stores the bytes.

Topics have a fixed number of partitions; a record's partition is chosen from its
key with Kafka's default partitioner (murmur2), so one key's records are totally
ordered in one partition and land in the same partition number as on Kafka.
Offsets are per partition and grow from 0: dense for plain appends; on Kafka a
fenced (transactional) append leaves a gap for its commit marker. Consumer groups
commit the offset of the next record to read, per partition.

Group membership: `join` makes a process a member of a consumer group. The group
divides the partitions of its topics among its live members (disjoint, covering all);
a member joining, leaving, or going silent past its timeouts triggers a rebalance
(eager: every member first gives up its partitions, `on_revoked` awaited while it may
still commit for them, then `on_assigned` with its new share before any of their
records is returned). A member writes through `GroupMember.commit`, which is fenced:
once a partition belongs to another member, a commit for it raises `Fenced` and
appends nothing for it. Each adapter's module docstring says how it fences.

Adapters: `aob.events.log.sqlite` (embedded default) and, in cluster mode, Kafka.
Every adapter passes the same conformance suite (`tests/conformance/test_log_port.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class LogError(Exception):
    """Base of every error an event log adapter raises."""


class UnknownTopic(LogError):
    pass


class Fenced(LogError):
    """This member no longer owns a partition it tried to commit or append for."""


class CommitUnknown(LogError):
    """A member's commit failed, and whether it was written cannot be told now (Kafka:
    the broker went away mid-transaction and did not come back in time). Writing it
    again could write it twice: its host should stop, and the partition's next owner
    finds out (its producer's init settles the transaction)."""


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


class RebalanceListener(Protocol):
    """Told of the partitions a group member gains and loses."""

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        """Runs before any record of `partitions` is returned (they may be empty)."""

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        """Runs before `partitions` go to another member; it may still commit for them.

        A member expelled meanwhile (silent past its timeouts) is told late: its
        commits then raise `Fenced`.
        """


# Defaults of `EventLog.join` (Kafka's own defaults).
SESSION_TIMEOUT: float = 10.0
POLL_TIMEOUT: float = 300.0


class GroupMember(Protocol):
    """One member of a consumer group (see `EventLog.join`). Use `Consumer` above it."""

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member owns now."""

    @property
    def positions(self) -> dict[TopicPartition, int]:
        """Per owned partition, the offset of the next record `poll` returns."""

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read owned partition `tp` from `offset` on."""

    async def poll(self, timeout: float, max_records: int) -> list[Record]:
        """The next records of owned partitions; waits up to `timeout` s for some.

        Polling is how a member shows it is alive: one that does not poll for
        `poll_timeout` s leaves the group.
        """

    async def commit(
        self,
        appends: Mapping[TopicPartition, Sequence[Append]],
        offsets: Mapping[TopicPartition, int],
        done: Mapping[TopicPartition, Sequence[range]] | None = None,
    ) -> list[Record]:
        """Append each owned partition's `appends` and commit its offset, atomically per
        partition. Raises `Fenced` if the member lost one of these partitions: nothing
        is appended or committed for a lost partition (nor for any, if it knew so
        before writing).

        `done`: per partition, ranges of records past its offset already finished (a
        host finishing records out of order); the partition's next owner does not get
        them from `poll`, and its commits carry on what it has not read yet
        (`aob.events.log.done_ahead`). An adapter may keep only the earliest: a record
        not skipped is delivered again, like any past the offset."""

    async def leave(self) -> None:
        """Leave the group (`on_revoked` of everything owned runs first). Idempotent."""


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

    async def wait_for_append(self, timeout: float, topics: Collection[str] | None = None) -> None:
        """Return when new records may have been appended (to one of `topics`; None:
        to any topic), or after `timeout` s. It may return earlier: callers read
        again and wait again."""

    async def join(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        session_timeout: float = SESSION_TIMEOUT,
        poll_timeout: float = POLL_TIMEOUT,
    ) -> GroupMember:
        """Join `group` to share the partitions of `topics` with its other members.

        Returns once the first assignment is made (`on_assigned` has run). A member
        that sends no heartbeat for `session_timeout` s (its process paused or dead)
        or does not poll for `poll_timeout` s loses its partitions.
        """

    async def close(self) -> None: ...
