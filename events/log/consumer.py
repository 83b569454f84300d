"""A consumer over any `EventLog`: poll records, then commit positions.

With a group (the default), the consumer is a member of that consumer group: it owns a
share of the partitions, learns of rebalances through its `RebalanceListener`, and its
commits are fenced (`Fenced` once a partition it commits for went to another member).
Several processes with the same group share the work without repeating it.

With `group=None`, it follows every partition of its topics from the positions it is
given (fanout and audit readers that must see everything); it commits nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence

from aob.events.log.port import (
    POLL_TIMEOUT,
    SESSION_TIMEOUT,
    Append,
    EventLog,
    Fenced,
    GroupMember,
    LogError,
    RebalanceListener,
    Record,
    TopicPartition,
)
from aob.events.partitioner import partition_for

log = logging.getLogger(__name__)

Appends = Sequence[Append] | Mapping[TopicPartition, Sequence[Append]]


class Consumer:
    """Reads `topics` for `group`, each partition in offset order.

    `start` joins the group; positions of gained partitions start at the group's
    committed offsets (or at `start_from`'s, the first time a partition is gained),
    and a listener's `on_assigned` may `seek` them elsewhere (a projection keeping
    its positions in its own store). `poll` advances them in memory; `commit` makes
    them durable, with records to append in the same step, atomically per partition.
    """

    def __init__(
        self,
        log: EventLog,
        group: str | None,
        topics: Iterable[str],
        *,
        max_records: int = 500,
        listener: RebalanceListener | None = None,
        session_timeout: float = SESSION_TIMEOUT,
        poll_timeout: float = POLL_TIMEOUT,
    ) -> None:
        self.log = log
        self.group = group
        self.topics = tuple(topics)
        self.max_records = max_records
        self.listener = listener
        self.session_timeout = session_timeout
        self.poll_timeout = poll_timeout
        self._member: GroupMember | None = None
        self._start_from: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int] = {}  # without a group
        self._early_seeks: dict[TopicPartition, int] = {}  # by the first on_assigned
        # Rebalances seen (counted as each one's on_revoked ends), the one each
        # partition was last revoked in, and the count when the last poll began: a
        # partition revoked since then was lost while its batch was being worked on.
        self._rebalances = 0
        self._revoked_in: dict[TopicPartition, int] = {}
        self._polled_in = 0

    async def start(self, start_from: Mapping[TopicPartition, int] | None = None) -> None:
        """Join the group (the first assignment's `on_assigned` has run on return)."""
        if start_from is not None:
            self._start_from = dict(start_from)
        if self.group is None:
            for topic in self.topics:
                for partition in range(await self.log.partitions(topic)):
                    tp = TopicPartition(topic, partition)
                    self._positions[tp] = self._start_from.get(tp, 0)
            return
        member = await self.log.join(
            self.group,
            self.topics,
            _Positioning(self),
            session_timeout=self.session_timeout,
            poll_timeout=self.poll_timeout,
        )
        # The first on_assigned ran inside join, before the member was ours to seek.
        seeks, self._early_seeks = self._early_seeks, {}
        for tp, offset in seeks.items():
            if tp in member.assignment:
                member.seek(tp, offset)
        self._member = member

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        if self._member is None:
            return frozenset(self._positions)
        return self._member.assignment

    @property
    def positions(self) -> dict[TopicPartition, int]:
        if self._member is None:
            return dict(self._positions)
        return self._member.positions

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read `tp` (owned) from `offset` on."""
        if self._member is not None:
            self._member.seek(tp, offset)
        elif self.group is not None:
            self._early_seeks[tp] = offset  # joining: applied once join returns
        elif tp in self._positions:
            self._positions[tp] = offset
        else:
            raise LogError(f"{tp} is not one of this consumer's partitions")

    async def poll(self, timeout: float = 1.0) -> list[Record]:
        """The next records of owned partitions; waits up to `timeout` s when there are none."""
        if self._member is not None:
            self._polled_in = self._rebalances
            return await self._member.poll(timeout, self.max_records)
        records = await self._read()
        if records or timeout <= 0:
            return records
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # A wake-up only says that something was appended, maybe to another topic: keep
        # waiting rather than return empty-handed, only for the caller to read again.
        while (remaining := deadline - loop.time()) > 0:
            await self._wait_for_append(remaining)
            records = await self._read()
            if records:
                break
        return records

    async def _wait_for_append(self, timeout: float) -> None:
        """Until an append that may concern this consumer (one to its topics, where the
        log tells appends by topic), or `timeout` s."""
        await self.log.wait_for_append(timeout, self.topics)

    async def _read(self) -> list[Record]:
        # One end-offsets call per topic, then reads only where records wait: on a
        # remote log, asking each partition at its end costs a round trip apiece.
        ends = {topic: await self.log.end_offsets(topic) for topic in self.topics}
        records: list[Record] = []
        for tp, offset in self._positions.items():
            if offset >= ends[tp.topic].get(tp.partition, 0):
                continue
            batch = await self.log.read(tp.topic, tp.partition, offset, self.max_records)
            if batch:
                self._positions[tp] = batch[-1].offset + 1
                records.extend(batch)
        return records

    async def commit(
        self,
        appends: Appends = (),
        *,
        partitions: Iterable[TopicPartition] | None = None,
        offsets: Mapping[TopicPartition, int] | None = None,
        done: Mapping[TopicPartition, Sequence[range]] | None = None,
    ) -> list[Record]:
        """Append `appends` and commit the positions of the owned partitions (or only
        of `partitions`; or `offsets`, for a host that must not commit past work still
        in flight, with the records it finished past them as `done`: see
        `GroupMember.commit`), atomically per partition. Raises `Fenced`, appending
        nothing for it, when a partition was lost.

        Appends belong to the input partition they were made from: pass a mapping to
        say so. A plain sequence is split by key, as hosts key what they append by the
        key of its input (a run's events follow the run's partition): an append goes
        with the partition its key has in the topics read here. One whose partition
        this member no longer owns (lost in a rebalance since its input was read) is
        dropped: the partition's new owner reads that input again and appends it,
        and attributing it to a partition still owned would let a stale member write.
        """
        if self._member is None:
            raise LogError("a consumer without a group commits nothing")
        positions = self._member.positions if offsets is None else dict(offsets)
        if partitions is not None:
            wanted = set(partitions)
            positions = {tp: offset for tp, offset in positions.items() if tp in wanted}
        if isinstance(appends, Mapping):
            by_partition = {tp: list(records) for tp, records in appends.items() if records}
        else:
            by_partition = await self._split(appends)
        return await self._member.commit(by_partition, positions, done)

    async def commit_unless_fenced(self, appends: Appends = ()) -> list[Record]:
        """`commit`, for a host with nothing to undo when fenced: its batch is dropped
        (the partitions' new owner reads those inputs again and does their work) and it
        goes on with what it still owns, rather than die.

        For a host that works on the records of its last poll (without a listener): what
        it made of a partition revoked since that poll began is dropped too, even if the
        partition came back in the same rebalance or a later one. Such records are read
        again from the committed offset (another member may have worked on them
        meanwhile: committing the first batch's work would do it twice, as a task's
        approval was asked twice in the chaos test), also those the poll returned after
        the partition came back."""
        if self._member is None:
            raise LogError("a consumer without a group commits nothing")
        stale = {tp for tp, n in self._revoked_in.items() if n > self._polled_in}
        owned = self._member.assignment - stale
        if stale:
            names = ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in stale))
            log.warning("group %s: work of partitions revoked since dropped: %s", self.group, names)
            await self._rewind(stale)
        if isinstance(appends, Mapping):
            appends = {tp: records for tp, records in appends.items() if tp not in stale}
        else:
            appends = await self._split(appends, owned)
        try:
            return await self.commit(appends, partitions=owned)
        except Fenced as fenced:
            log.warning("group %s: %s; the new owner does this batch's work", self.group, fenced)
            return []

    async def _rewind(self, partitions: Iterable[TopicPartition]) -> None:
        """Read the owned ones of `partitions` again from their committed offsets."""
        owned = [tp for tp in partitions if tp in self.assignment]
        for topic in sorted({tp.topic for tp in owned}):
            committed = await self.log.committed(self.group or "", topic)
            for tp in owned:
                if tp.topic == topic and tp in self.assignment:  # not lost meanwhile
                    self.seek(tp, committed.get(tp.partition, 0))

    async def _split(
        self, appends: Sequence[Append], owned: frozenset[TopicPartition] | None = None
    ) -> dict[TopicPartition, list[Append]]:
        """Attribute each append to the owned partition of its key (of `owned`, if
        given); drop a lost one's."""
        if not appends:
            return {}
        counts = {topic: await self.log.partitions(topic) for topic in self.topics}
        owned = self.assignment if owned is None else owned
        out: dict[TopicPartition, list[Append]] = {}
        lost: set[TopicPartition] = set()
        home_of: dict[str, TopicPartition | None] = {}  # a run's appends share its key
        for append in appends:
            key = append.key
            if key in home_of:
                home = home_of[key]
            else:
                homes = [TopicPartition(t, partition_for(key, n)) for t, n in counts.items()]
                home = home_of[key] = next((tp for tp in homes if tp in owned), None)
                if home is None:
                    lost.update(homes)
            if home is not None:
                out.setdefault(home, []).append(append)
        if lost:
            names = ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in lost))
            log.warning("group %s: appends of lost partitions dropped: %s", self.group, names)
        return out

    async def close(self) -> None:
        """Leave the group (`on_revoked` of the owned partitions runs first)."""
        if self._member is not None:
            await self._member.leave()  # its on_revoked may still commit
            self._member = None

    async def caught_up(self) -> bool:
        """Whether every owned partition has been read to its end."""
        positions = self.positions
        for topic in self.topics:
            ends = await self.log.end_offsets(topic)
            for partition, end in ends.items():
                tp = TopicPartition(topic, partition)
                if tp in positions and positions[tp] < end:
                    return False
        return True


class _Positioning:
    """Applies `start_from` to gained partitions, then tells the consumer's listener."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        consumer = self.consumer
        for tp in partitions:
            offset = consumer._start_from.pop(tp, None)
            if offset is not None:
                consumer.seek(tp, offset)
        if consumer.listener is not None:
            await consumer.listener.on_assigned(partitions)

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        consumer = self.consumer
        if consumer.listener is not None:
            await consumer.listener.on_revoked(partitions)
        consumer._rebalances += 1
        for tp in partitions:
            consumer._revoked_in[tp] = consumer._rebalances
