"""A consumer-group reader over any `EventLog`: poll records, then commit positions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence

from aob.events.log.port import Append, EventLog, Record, TopicPartition


class Consumer:
    """Reads `topics` for `group`, each partition in offset order.

    Positions start at the group's committed offsets (or at `start_from`, for a
    projection that keeps its positions in its own store). `poll` advances them
    in memory; `commit` makes them durable, optionally with records to append in
    the same step (atomic on the embedded log: exactly-once processing there).
    """

    def __init__(
        self,
        log: EventLog,
        group: str,
        topics: Iterable[str],
        *,
        max_records: int = 500,
    ) -> None:
        self.log = log
        self.group = group
        self.topics = tuple(topics)
        self.max_records = max_records
        self._positions: dict[TopicPartition, int] = {}

    async def start(self, start_from: Mapping[TopicPartition, int] | None = None) -> None:
        for topic in self.topics:
            committed = await self.log.committed(self.group, topic)
            for partition in range(await self.log.partitions(topic)):
                tp = TopicPartition(topic, partition)
                if start_from is not None:
                    self._positions[tp] = start_from.get(tp, 0)
                else:
                    self._positions[tp] = committed.get(partition, 0)

    @property
    def positions(self) -> dict[TopicPartition, int]:
        return dict(self._positions)

    async def poll(self, timeout: float = 1.0) -> list[Record]:
        """The next records across partitions; waits up to `timeout` s when there are none."""
        records = await self._read()
        if records or timeout <= 0:
            return records
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # A wake-up only says that something was appended, maybe to another topic: keep
        # waiting rather than return empty-handed, only for the caller to read again.
        while (remaining := deadline - loop.time()) > 0:
            await self.log.wait_for_append(remaining)
            records = await self._read()
            if records:
                break
        return records

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

    async def commit(self, appends: Sequence[Append] = ()) -> list[Record]:
        """Append `appends` (if any) and commit the current positions."""
        return await self.log.append_and_commit(appends, self.group, self._positions)

    async def caught_up(self) -> bool:
        """Whether every partition has been read to its end."""
        for topic in self.topics:
            ends = await self.log.end_offsets(topic)
            for partition, end in ends.items():
                if self._positions.get(TopicPartition(topic, partition), 0) < end:
                    return False
        return True
