"""Consumer groups of the embedded log: Kafka's eager group protocol inside one process.

The embedded log is single-process, so its group coordinator is this in-memory object,
owned by the `SqliteEventLog`; only the committed offsets are stored (in SQLite).

Protocol (as Kafka's eager rebalance):

* A group has a generation and an owner per partition of its members' topics.
* A member joining or leaving, or one expelled for silence (no heartbeat for its
  `session_timeout`, no poll for its `poll_timeout`), starts a rebalance: every member
  that owns partitions runs `on_revoked` (it may still commit for them meanwhile) and
  then releases them. When all have released, the partitions are dealt round-robin
  over the live members (in join order), the generation moves on, and each member
  runs `on_assigned` before its `poll` returns any record of them.
* Each member has a background task that heartbeats and runs its callbacks, so a
  member busy elsewhere still takes part in a rebalance (as aiokafka's does).

Fencing: the log checks ownership (`owns`) inside its group-commit flush, synchronously
with the SQLite transaction that would write the member's records and offsets. A member
that released or was expelled from a partition gets `Fenced` and writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aob.events.log.done_ahead import DoneAhead, carried, read_past
from aob.events.log.done_ahead import decode as decode_done
from aob.events.log.port import (
    Append,
    Fenced,
    LogError,
    RebalanceListener,
    Record,
    TopicPartition,
)

log = logging.getLogger(__name__)

_MAX_TICK = 0.5  # seconds between a member's heartbeats and expiry checks, at most


class _Log(Protocol):
    """What members need of the embedded log they belong to."""

    async def partitions(self, topic: str) -> int: ...

    async def committed(self, group: str, topic: str) -> dict[int, int]: ...

    async def committed_done(self, group: str, topic: str) -> dict[int, str]: ...

    async def end_offsets(self, topic: str) -> dict[int, int]: ...

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 500
    ) -> list[Record]: ...

    def watch(self, topics: Iterable[str], waiter: asyncio.Future[None]) -> Callable[[], None]: ...

    async def fenced_commit(
        self,
        records: Sequence[Append],
        group: str,
        offsets: Mapping[TopicPartition, int],
        owner: Callable[[], bool],
        done: Mapping[TopicPartition, str] | None = None,
    ) -> list[Record]: ...


@dataclass(eq=False)
class _Group:
    name: str
    generation: int = 0
    members: dict[str, EmbeddedMember] = field(default_factory=dict)  # in join order
    owners: dict[TopicPartition, str] = field(default_factory=dict)
    revoking: set[str] = field(default_factory=set)  # members yet to release
    rebalancing: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Polls waiting for records, woken by any change of the group as well.
    pollers: set[asyncio.Future[None]] = field(default_factory=set)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()
        for poller in self.pollers:
            if not poller.done():
                poller.set_result(None)


class EmbeddedGroups:
    """The group coordinator of one embedded log."""

    def __init__(self, event_log: _Log) -> None:
        self.log = event_log
        self._groups: dict[str, _Group] = {}
        self._ids = itertools.count(1)

    async def join(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        session_timeout: float,
        poll_timeout: float,
    ) -> EmbeddedMember:
        for topic in topics:
            await self.log.partitions(topic)  # raises UnknownTopic
        state = self._groups.setdefault(group, _Group(group))
        member = EmbeddedMember(
            self,
            state,
            f"{group}-{next(self._ids)}",
            tuple(topics),
            listener,
            session_timeout=session_timeout,
            poll_timeout=poll_timeout,
        )
        await member.start()
        return member

    def close(self) -> None:
        """The log closes: members stop taking part (their calls then fail)."""
        for state in self._groups.values():
            for member in list(state.members.values()):
                member.stop()

    def owns(self, group: str, member_id: str, partitions: Iterable[TopicPartition]) -> bool:
        state = self._groups.get(group)
        if state is None or member_id not in state.members:
            return False
        return all(state.owners.get(tp) == member_id for tp in partitions)

    # --- membership changes (called by members; all synchronous) ----------------------

    def add(self, state: _Group, member: EmbeddedMember) -> None:
        state.members[member.member_id] = member
        self._rebalance(state)

    def remove(self, state: _Group, member: EmbeddedMember) -> None:
        if state.members.pop(member.member_id, None) is None:
            return
        self.release(state, member)
        self._rebalance(state)

    def release(self, state: _Group, member: EmbeddedMember) -> None:
        """`member` gave up its partitions (revoked, left or expelled)."""
        for tp in [tp for tp, owner in state.owners.items() if owner == member.member_id]:
            del state.owners[tp]
        state.revoking.discard(member.member_id)
        if state.rebalancing and not state.revoking:
            self._assign(state)
        state.notify()

    def expire(self, state: _Group) -> None:
        now = time.monotonic()
        for member in list(state.members.values()):
            if member.silent_since(now):
                log.warning("group %s: member %s expelled (silent)", state.name, member.member_id)
                member.expelled = True
                self.remove(state, member)

    def _rebalance(self, state: _Group) -> None:
        state.rebalancing = True
        state.revoking = {owner for owner in state.owners.values() if owner in state.members}
        if not state.revoking:
            self._assign(state)
        state.notify()

    def _assign(self, state: _Group) -> None:
        # The partitions of every topic some member reads, dealt round-robin over the
        # members reading that topic (Kafka's RoundRobinAssignor).
        state.owners = {}
        members = list(state.members.values())
        partitions = sorted(
            {tp for member in members for tp in member.all_partitions},
            key=lambda tp: (tp.topic, tp.partition),
        )
        turn = 0
        for tp in partitions:
            readers = [m for m in members if tp.topic in m.topics]
            if readers:
                state.owners[tp] = readers[turn % len(readers)].member_id
                turn += 1
        state.rebalancing = False
        state.generation += 1
        state.notify()


class EmbeddedMember:
    """A member of an embedded consumer group (see `EventLog.join`)."""

    def __init__(
        self,
        groups: EmbeddedGroups,
        state: _Group,
        member_id: str,
        topics: tuple[str, ...],
        listener: RebalanceListener,
        *,
        session_timeout: float,
        poll_timeout: float,
    ) -> None:
        self._groups = groups
        self._state = state
        self.member_id = member_id
        self.topics = topics
        self._listener = listener
        self._session_timeout = session_timeout
        self._poll_timeout = poll_timeout
        self.all_partitions: frozenset[TopicPartition] = frozenset()
        self.expelled = False
        self._owned: frozenset[TopicPartition] = frozenset()  # announced by on_assigned
        self._positions: dict[TopicPartition, int] = {}
        # Records the last owner finished past the committed offset, not read yet.
        self._done: dict[TopicPartition, DoneAhead] = {}
        self._generation = 0  # the group's generation this member has taken up
        self._heartbeat = time.monotonic()
        self._polling = 0
        self._polled = time.monotonic()
        self._leaving = False
        self._left = False
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    # --- GroupMember ---------------------------------------------------------------------

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        return self._owned

    @property
    def positions(self) -> dict[TopicPartition, int]:
        return dict(self._positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._owned:
            raise LogError(f"cannot seek {tp}: this member does not own it")
        if offset < 0:
            raise LogError(f"cannot seek {tp} to negative offset {offset}")
        self._positions[tp] = offset

    async def start(self) -> None:
        partitions: set[TopicPartition] = set()
        for topic in self.topics:
            count = await self._groups.log.partitions(topic)
            partitions.update(TopicPartition(topic, p) for p in range(count))
        self.all_partitions = frozenset(partitions)
        self._groups.add(self._state, self)
        self._task = asyncio.create_task(self._coordinate())
        await self._until(lambda: self._generation > 0 or self._failure is not None)
        self._raise_failure()

    async def poll(self, timeout: float, max_records: int) -> list[Record]:
        self._check_open()
        self._polling += 1
        try:
            return await self._poll(timeout, max_records)
        finally:
            self._polling -= 1
            self._polled = time.monotonic()

    async def commit(
        self,
        appends: Mapping[TopicPartition, Sequence[Append]],
        offsets: Mapping[TopicPartition, int],
        done: Mapping[TopicPartition, Sequence[range]] | None = None,
    ) -> list[Record]:
        self._check_open()
        partitions = set(appends) | set(offsets)
        if not self._owns(partitions):
            raise Fenced(self._lost(partitions))
        records = [append for tp in appends for append in appends[tp]]
        done = done or {}
        metadata = {tp: carried(done.get(tp, ()), self._done.get(tp, ())) for tp in offsets}
        return await self._groups.log.fenced_commit(
            records, self._state.name, offsets, lambda: self._owns(partitions), metadata
        )

    async def leave(self) -> None:
        if self._leaving:
            return
        self._leaving = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self._revoke()  # may still commit
        finally:
            self._left = True
            self._groups.remove(self._state, self)

    def stop(self) -> None:
        self._left = self._leaving = True
        if self._task is not None:
            self._task.cancel()

    # --- liveness -------------------------------------------------------------------------

    def silent_since(self, now: float) -> bool:
        """Whether this member's heartbeat or polls stopped past their timeouts."""
        idle = 0.0 if self._polling else now - self._polled
        return idle > self._poll_timeout or now - self._heartbeat > self._session_timeout

    # --- internals ------------------------------------------------------------------------

    def _owns(self, partitions: Iterable[TopicPartition]) -> bool:
        return self._groups.owns(self._state.name, self.member_id, partitions)

    def _lost(self, partitions: Iterable[TopicPartition]) -> str:
        lost = sorted(
            (tp for tp in partitions if not self._owns([tp])),
            key=lambda tp: (tp.topic, tp.partition),
        )
        names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in lost)
        return f"member {self.member_id} of group {self._state.name} no longer owns {names}"

    def _check_open(self) -> None:
        if self._left:
            raise LogError(f"member {self.member_id} has left group {self._state.name}")
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise LogError(f"group {self._state.name}: {self._failure}") from self._failure

    async def _poll(self, timeout: float, max_records: int) -> list[Record]:
        if self.expelled:  # back from a pause: it joins again, as a new member would
            self.expelled = False
            self._heartbeat = time.monotonic()
            self._groups.add(self._state, self)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            records = await self._read(max_records) if self._settled() else []
            remaining = deadline - loop.time()
            if records or remaining <= 0:
                return records
            await self._wait_for_records(remaining)

    async def _wait_for_records(self, timeout: float) -> None:
        """Until an append to this member's topics, a change of its group, or `timeout`
        s: one future, woken only by what concerns this member."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        unwatch = self._groups.log.watch(self.topics, waiter)
        self._state.pollers.add(waiter)
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            unwatch()
            self._state.pollers.discard(waiter)

    def _settled(self) -> bool:
        """Whether records may be returned: no rebalance is waiting on this member."""
        state = self._state
        return self._generation == state.generation and self.member_id not in state.revoking

    async def _read(self, max_records: int) -> list[Record]:
        event_log = self._groups.log
        ends = {topic: await event_log.end_offsets(topic) for topic in self.topics}
        records: list[Record] = []
        for tp in sorted(self._owned, key=lambda tp: (tp.topic, tp.partition)):
            offset = self._positions.get(tp, 0)
            if offset >= ends[tp.topic].get(tp.partition, 0) or len(records) >= max_records:
                continue
            batch = await event_log.read(tp.topic, tp.partition, offset, max_records - len(records))
            if batch and tp in self._owned:  # a callback may have run meanwhile
                self._positions[tp] = batch[-1].offset + 1
                if done := self._done.get(tp):
                    batch, self._done[tp] = read_past(batch, done, self._positions[tp])
                records.extend(batch)
        return records

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._state.changed.wait()

    async def _coordinate(self) -> None:
        """Heartbeat, expel silent members, and take part in rebalances."""
        state = self._state
        tick = min(_MAX_TICK, self._session_timeout / 3, self._poll_timeout / 3)
        try:
            while True:
                self._heartbeat = time.monotonic()
                self._groups.expire(state)
                if self.expelled and self._owned:
                    await self._revoke()  # told late: its commits are fenced already
                elif self.member_id in state.revoking:
                    await self._revoke()
                    self._groups.release(state, self)
                    continue
                elif (
                    not self.expelled
                    and self._generation != state.generation
                    and (not state.rebalancing)
                ):
                    await self._take_assignment()
                    continue  # the group may have moved on meanwhile
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(tick):
                        await state.changed.wait()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a listener bug: polls report it
            log.exception("group %s: member %s failed", state.name, self.member_id)
            self._failure = error
            self._groups.remove(state, self)
            state.notify()

    async def _take_assignment(self) -> None:
        state = self._state
        generation = state.generation
        gained = frozenset(tp for tp, owner in state.owners.items() if owner == self.member_id)
        topics = {tp.topic for tp in gained}
        committed = {topic: await self._groups.log.committed(state.name, topic) for topic in topics}
        done = {topic: await self._groups.log.committed_done(state.name, topic) for topic in topics}
        self._positions = {tp: committed[tp.topic].get(tp.partition, 0) for tp in gained}
        self._done = {tp: decode_done(done[tp.topic].get(tp.partition)) for tp in gained}
        self._owned = gained
        await self._listener.on_assigned(gained)
        self._generation = generation
        state.notify()

    async def _revoke(self) -> None:
        # Still owned (committable) while the callback runs: released after it.
        try:
            if self._owned:
                await self._listener.on_revoked(self._owned)
        finally:
            self._owned = frozenset()
            self._positions = {}
            self._done = {}


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
