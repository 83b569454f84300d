"""Events are bounded: no record over the configured maximum reaches the log.

Every append goes through `BoundedEventLog`, which refuses a call holding an
oversize record before anything of it is written (Kafka would refuse it too, but
only after part of a batch may have gone out). Hosts check their own records first
with `oversize` so that they can fail just the node or run that produced one, with a
message naming the setting, and never stall on it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from aob.events.log.port import (
    POLL_TIMEOUT,
    SESSION_TIMEOUT,
    Append,
    EventLog,
    GroupMember,
    LogError,
    RebalanceListener,
    Record,
    TopicPartition,
)


class EventTooLarge(LogError):
    """A record is over the maximum event size: nothing of the call was appended."""


def oversize(records: Sequence[Append], max_bytes: int) -> str | None:
    """Why one of `records` may not be appended (None when all fit)."""
    for record in records:
        size = len(record.value)
        if size > max_bytes:
            return (
                f"an event of {size} bytes for {record.topic} is over the maximum event "
                f"size ({max_bytes} bytes, AOB_MAX_EVENT_BYTES)"
            )
    return None


class BoundedEventLog:
    """An `EventLog` that refuses records over `max_bytes` (raises EventTooLarge)."""

    def __init__(self, inner: EventLog, max_bytes: int) -> None:
        self.inner = inner
        self.max_bytes = max_bytes

    def _check(self, records: Sequence[Append]) -> None:
        problem = oversize(records, self.max_bytes)
        if problem is not None:
            raise EventTooLarge(problem)

    async def append(self, records: Sequence[Append]) -> list[Record]:
        self._check(records)
        return await self.inner.append(records)

    async def append_and_commit(
        self, records: Sequence[Append], group: str, offsets: Mapping[TopicPartition, int]
    ) -> list[Record]:
        self._check(records)
        return await self.inner.append_and_commit(records, group, offsets)

    async def create_topic(self, topic: str, partitions: int) -> None:
        await self.inner.create_topic(topic, partitions)

    async def partitions(self, topic: str) -> int:
        return await self.inner.partitions(topic)

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 500
    ) -> list[Record]:
        return await self.inner.read(topic, partition, offset, max_records)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        return await self.inner.end_offsets(topic)

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        return await self.inner.committed(group, topic)

    async def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        await self.inner.commit(group, offsets)

    async def wait_for_append(self, timeout: float, topics: Collection[str] | None = None) -> None:
        await self.inner.wait_for_append(timeout, topics)

    @property
    def watch(self) -> Any:
        """The inner log's `watch` (appends by topic), if it has one: else None."""
        return getattr(self.inner, "watch", None)

    async def join(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        session_timeout: float = SESSION_TIMEOUT,
        poll_timeout: float = POLL_TIMEOUT,
    ) -> GroupMember:
        inner = await self.inner.join(
            group, topics, listener, session_timeout=session_timeout, poll_timeout=poll_timeout
        )
        return _BoundedMember(inner, self.max_bytes)

    async def close(self) -> None:
        await self.inner.close()


class _BoundedMember:
    """A group member whose commits refuse oversize records, as `BoundedEventLog`."""

    def __init__(self, inner: GroupMember, max_bytes: int) -> None:
        self.inner = inner
        self.max_bytes = max_bytes

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        return self.inner.assignment

    @property
    def positions(self) -> dict[TopicPartition, int]:
        return self.inner.positions

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.inner.seek(tp, offset)

    async def poll(self, timeout: float, max_records: int) -> list[Record]:
        return await self.inner.poll(timeout, max_records)

    async def commit(
        self,
        appends: Mapping[TopicPartition, Sequence[Append]],
        offsets: Mapping[TopicPartition, int],
        done: Mapping[TopicPartition, Sequence[range]] | None = None,
    ) -> list[Record]:
        problem = oversize([a for records in appends.values() for a in records], self.max_bytes)
        if problem is not None:
            raise EventTooLarge(problem)
        return await self.inner.commit(appends, offsets, done)

    async def leave(self) -> None:
        await self.inner.leave()
