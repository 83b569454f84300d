"""Several aob installations on one log: every topic and group name gets a prefix.

`PrefixedEventLog(log, "staging.")` stores `aob.runs` as `staging.aob.runs` and the
group `aob-projector` as `staging.aob-projector`, and hands records back under their
plain names, so the code above it (and the read models, which record topic names)
never sees the prefix. Tests use it to give each test fresh topics on a shared broker.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Final

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

_TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's rule


class PrefixedEventLog:
    """An `EventLog` whose topics and groups live under `prefix` in `inner`."""

    def __init__(self, inner: EventLog, prefix: str) -> None:
        if not prefix:
            raise LogError("a topic prefix must not be empty")
        self.inner = inner
        self.prefix = prefix

    def _topic(self, topic: str) -> str:
        return self.prefix + topic

    def _record(self, record: Record) -> Record:
        return Record(
            record.topic.removeprefix(self.prefix),
            record.partition,
            record.offset,
            record.key,
            record.value,
            record.timestamp,
        )

    def _appends(self, records: Sequence[Append]) -> list[Append]:
        return [Append(self._topic(r.topic), r.key, r.value) for r in records]

    def _offsets(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        return {TopicPartition(self._topic(tp.topic), tp.partition): o for tp, o in offsets.items()}

    async def create_topic(self, topic: str, partitions: int) -> None:
        # The plain name must be one the log would take on its own, too.
        if not _TOPIC_NAME.fullmatch(topic) or topic in {".", ".."}:
            raise LogError(f"invalid topic name {topic!r} (Kafka allows [A-Za-z0-9._-]{{1,249}})")
        await self.inner.create_topic(self._topic(topic), partitions)

    async def partitions(self, topic: str) -> int:
        return await self.inner.partitions(self._topic(topic))

    async def append(self, records: Sequence[Append]) -> list[Record]:
        appended = await self.inner.append(self._appends(records))
        return [self._record(r) for r in appended]

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 500
    ) -> list[Record]:
        records = await self.inner.read(self._topic(topic), partition, offset, max_records)
        return [self._record(r) for r in records]

    async def end_offsets(self, topic: str) -> dict[int, int]:
        return await self.inner.end_offsets(self._topic(topic))

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        return await self.inner.committed(self.prefix + group, self._topic(topic))

    async def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        await self.inner.commit(self.prefix + group, self._offsets(offsets))

    async def append_and_commit(
        self, records: Sequence[Append], group: str, offsets: Mapping[TopicPartition, int]
    ) -> list[Record]:
        appended = await self.inner.append_and_commit(
            self._appends(records), self.prefix + group, self._offsets(offsets)
        )
        return [self._record(r) for r in appended]

    async def wait_for_append(self, timeout: float, topics: Collection[str] | None = None) -> None:
        inner = None if topics is None else [self._topic(t) for t in topics]
        await self.inner.wait_for_append(timeout, inner)

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
            self.prefix + group,
            [self._topic(topic) for topic in topics],
            _PlainNames(listener, self.prefix),
            session_timeout=session_timeout,
            poll_timeout=poll_timeout,
        )
        return _PrefixedMember(inner, self)

    async def close(self) -> None:
        await self.inner.close()


def _plain(partitions: frozenset[TopicPartition], prefix: str) -> frozenset[TopicPartition]:
    return frozenset(
        TopicPartition(tp.topic.removeprefix(prefix), tp.partition) for tp in partitions
    )


class _PlainNames:
    """Tells a listener of its partitions under their plain names."""

    def __init__(self, listener: RebalanceListener, prefix: str) -> None:
        self.listener = listener
        self.prefix = prefix

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        await self.listener.on_assigned(_plain(partitions, self.prefix))

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        await self.listener.on_revoked(_plain(partitions, self.prefix))


class _PrefixedMember:
    """A group member of the inner log, speaking plain names."""

    def __init__(self, inner: GroupMember, log: PrefixedEventLog) -> None:
        self.inner = inner
        self.log = log

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        return _plain(self.inner.assignment, self.log.prefix)

    @property
    def positions(self) -> dict[TopicPartition, int]:
        prefix = self.log.prefix
        return {
            TopicPartition(tp.topic.removeprefix(prefix), tp.partition): offset
            for tp, offset in self.inner.positions.items()
        }

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.inner.seek(TopicPartition(self.log.prefix + tp.topic, tp.partition), offset)

    async def poll(self, timeout: float, max_records: int) -> list[Record]:
        return [self.log._record(r) for r in await self.inner.poll(timeout, max_records)]

    async def commit(
        self,
        appends: Mapping[TopicPartition, Sequence[Append]],
        offsets: Mapping[TopicPartition, int],
        done: Mapping[TopicPartition, Sequence[range]] | None = None,
    ) -> list[Record]:
        log = self.log
        committed = await self.inner.commit(
            {
                TopicPartition(log.prefix + tp.topic, tp.partition): log._appends(records)
                for tp, records in appends.items()
            },
            log._offsets(offsets),
            {
                TopicPartition(log.prefix + tp.topic, tp.partition): spans
                for tp, spans in (done or {}).items()
            },
        )
        return [log._record(r) for r in committed]

    async def leave(self) -> None:
        await self.inner.leave()
