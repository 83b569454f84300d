"""Fanout: live run events for many subscribers, from one reader of `aob.runs` per process.

A run's events sit in one partition of `aob.runs` (keyed by run id), so an event's
offset in that partition is a unique, increasing position within the run: it is
the event's id on the wire (SSE `id:`), and a client that reconnects with the last
id it saw (`Last-Event-ID`) resumes right after it.

How a subscriber gets every event exactly once:

1. It registers with the hub. The hub's tail is at offset H of the run's partition
   at that instant: every record from H on will be pushed to the subscriber's queue
   (registration and dispatch happen on the loop thread without an await between a
   read returning and its dispatch, so nothing slips between the two).
2. Events before H come from history: the timeline read model (complete below the
   projector's position P), plus a direct read of the log for [P, H) when the
   projector lags behind the tail.
3. Then the queue, skipping offsets already sent. History below H, live from H on:
   no gap, no duplicate.

The hub reads only partitions that have subscribers and jumps idle ones to their
end. Each subscriber has a bounded queue: one that falls behind is dropped (its
stream ends with a `reconnect` notice) rather than slowing the others; it comes
back with `Last-Event-ID` and catches up from history.

Sending costs per write, not per byte, so subscribers take what queued up in one
batch (one write). A stream that gives the hub a way to write to its client
(`stream(direct=...)`) costs less still: while it is idle and caught up, the hub's
dispatch writes each new batch to its socket itself (see `_Direct`), with no wake-up
and no task switch per subscriber. After each dispatch the tail pauses at least as long as the
subscribers took to take it: with a thousand subscribers in the process that also
runs the engine, the fanout degrades into bigger, later batches instead of
starving the engine that produces the events.

The tail needs only `read`/`end_offsets`/`wait_for_append` of the log port, so the
same hub runs over the embedded log or, in cluster mode, a Kafka-backed log whose
one consumer then serves every subscriber of this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import secrets
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, Generic, Protocol, TypeVar, cast

from aob.events.codec import CodecError, decode
from aob.events.log.port import Record, TopicPartition
from aob.events.partitioner import partition_for
from aob.events.types import RUNS_TOPIC, Event

log = logging.getLogger(__name__)

# Internal event types under the names the seed's fanout used (and a few it lacked).
SSE_NAMES: Final[Mapping[str, str]] = {
    "RunSubmitted": "workflow_started",
    "NodeScheduled": "node_scheduled",
    "NodeStarted": "node_started",
    "NodeCompleted": "node_completed",
    "NodeFailed": "node_failed",
    "NodeSkipped": "node_skipped",
    "ApprovalRequested": "approval_required",
    "ApprovalDecided": "approval_decided",
    "PatchProposed": "patch_proposed",
    "PatchApplied": "patch_applied",
    "PatchRejected": "patch_rejected",
    "RunCancelRequested": "cancel_requested",
    "RunCompleted": "workflow_completed",
    "RunFailed": "workflow_failed",
    "RunCancelled": "workflow_cancelled",
}
TERMINAL_STATUS: Final[Mapping[str, str]] = {
    "RunCompleted": "completed",
    "RunFailed": "failed",
    "RunCancelled": "cancelled",
}
FINISHED_RUN: Final = frozenset(TERMINAL_STATUS.values())
_HISTORY_BATCH: Final = 200  # history events per write
_MIN_PAUSE_S: Final = 0.001  # after a dispatch: lets a burst of appends gather
_MAX_YIELD_S: Final = 0.5  # cap of the pause that matches the subscribers' time
# How often partitions nobody listens to are moved to their end: a subscriber's
# history then reaches back at most this far less (the tail reads the rest), and a
# hub nobody listens to asks a Kafka log for its ends once a second, not at every
# append (it did once per run, a tenth of the broker's requests).
_IDLE_SKIP_S: Final = 1.0
_ERROR_TYPES: Final = frozenset({"NodeFailed", "RunFailed", "PatchRejected"})
_CAMEL: Final = re.compile(r"(?<!^)(?=[A-Z])")


def sse_name(event_type: str) -> str:
    """The wire name of an internal event type; new types get their snake_case name."""
    return SSE_NAMES.get(event_type) or _CAMEL.sub("_", event_type).lower()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- what a stream carries ------------------------------------------------------------


class RunEvent:
    """One event of a run, ready to send: built once, shared by every subscriber."""

    __slots__ = ("data", "event_id", "json", "name", "node_id", "offset", "sse", "type")

    def __init__(
        self,
        run_id: str,
        offset: int,
        event_type: str,
        envelope: Mapping[str, Any],
        data: dict[str, Any],
    ) -> None:
        self.offset = offset
        self.type = event_type
        self.name = sse_name(event_type)
        self.event_id: str = envelope["event_id"]
        self.data = data
        node_id = data.get("node_id")
        self.node_id: str | None = node_id if isinstance(node_id, str) else None
        message = {
            "id": offset,
            "event": self.name,
            "type": event_type,
            "run_id": run_id,
            "node_id": self.node_id,
            "event_id": self.event_id,
            "occurred_at": envelope["occurred_at"],
            "actor": envelope["actor"],
            "trace_id": envelope["trace_id"],
            "causation_id": envelope["causation_id"],
            "data": data,
        }
        self.json = _dumps(message)  # JSON text has no raw newline: one SSE data line
        self.sse = f"id: {offset}\r\nevent: {self.name}\r\ndata: {self.json}\r\n\r\n".encode()

    @classmethod
    def from_row(cls, run_id: str, row: Mapping[str, Any]) -> RunEvent:
        """From a timeline read-model row."""
        return cls(run_id, row["offset"], row["type"], row, row["data"])

    @classmethod
    def from_record(cls, record: Record, event: Event) -> RunEvent:
        envelope = {
            "event_id": event.event_id,
            "occurred_at": event.occurred_at,
            "actor": event.actor,
            "trace_id": event.trace_id,
            "causation_id": event.causation_id,
        }
        return cls(event.key, record.offset, event.type, envelope, asdict(event.payload))

    @property
    def terminal_status(self) -> str | None:
        """The run's final status ("completed", ...) if this event ends the run."""
        return TERMINAL_STATUS.get(self.type)

    @property
    def is_error(self) -> bool:
        if self.type in _ERROR_TYPES:
            return True
        return self.type == "NodeSkipped" and bool(self.data.get("warning"))


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The run has ended: the last thing a stream sends."""

    run_id: str
    status: str
    last_event_id: int | None

    @property
    def message(self) -> dict[str, Any]:
        return {
            "event": "end",
            "run_id": self.run_id,
            "status": self.status,
            "last_event_id": self.last_event_id,
        }

    @property
    def sse(self) -> bytes:
        return f"event: end\r\ndata: {_dumps(self.message)}\r\n\r\n".encode()


@dataclass(frozen=True, slots=True)
class StreamBroken:
    """The stream stops before the run ends; the client should reconnect from its last id.

    `reason` is "overflow" (the client read too slowly) or "shutdown" (the server stops).
    """

    reason: str
    last_event_id: int | None

    @property
    def message(self) -> dict[str, Any]:
        return {"event": "reconnect", "reason": self.reason, "last_event_id": self.last_event_id}

    @property
    def sse(self) -> bytes:
        return f"event: reconnect\r\ndata: {_dumps(self.message)}\r\n\r\n".encode()


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing happened for a while: lets clients and proxies know the stream lives."""

    message = {"event": "heartbeat"}
    sse = b": heartbeat\r\n\r\n"


StreamItem = RunEvent | StreamEnd | StreamBroken | Heartbeat


class Batch(list[StreamItem]):
    """What a stream sends in one write, with its SSE frames joined once.

    A live batch is built once per dispatch and the same object goes to every
    subscriber of the run that wants all of it: its bytes are joined once, not once
    per subscriber. Do not change a batch after reading `sse`.
    """

    __slots__ = ("_sse",)

    def __init__(self, items: Iterable[StreamItem] = ()) -> None:
        super().__init__(items)
        self._sse: bytes | None = None

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = b"".join(item.sse for item in self)
        return self._sse


class _Live:
    """One dispatch's new events of one run, shared by all its subscribers: the events
    (duplicates already dropped), their ids, and what an unfiltered subscriber sends."""

    __slots__ = ("batch", "events", "finished", "first", "ids", "last", "size")

    def __init__(self, run_id: str, events: list[RunEvent], first: int, last: int) -> None:
        self.events = events
        self.first = first  # offsets of the run's records in this dispatch, duplicates too
        self.last = last
        self.size = len(events)
        self.ids = frozenset(event.event_id for event in events)
        self.batch = Batch()
        self.finished = False
        for event in events:
            self.batch.append(event)
            if event.terminal_status:
                self.batch.append(StreamEnd(run_id, event.terminal_status, event.offset))
                self.finished = True
                self.last = event.offset
                break


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """Which events a subscriber wants.

    `nodes`: only events of these nodes (plus the run's outcome); `errors_only`: only
    failures (failed nodes and runs, rejected patches, skips with a warning).
    """

    nodes: frozenset[str] = frozenset()
    errors_only: bool = False

    @property
    def everything(self) -> bool:
        return not self.nodes and not self.errors_only

    def accepts(self, event: RunEvent) -> bool:
        if self.errors_only and not event.is_error:
            return False
        return not self.nodes or event.node_id in self.nodes or event.terminal_status is not None


# --- ports ----------------------------------------------------------------------------


class TailSource(Protocol):
    """What the hub reads the log with (a subset of `aob.events.log.port.EventLog`)."""

    async def partitions(self, topic: str) -> int: ...

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 500
    ) -> list[Record]: ...

    async def end_offsets(self, topic: str) -> dict[int, int]: ...

    async def wait_for_append(
        self, timeout: float, topics: Collection[str] | None = None
    ) -> None: ...


class HistorySource(Protocol):
    """What the hub reads history with: the read models (`AsyncReadModels`)."""

    async def timeline(
        self, key: str, after_offset: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]: ...

    async def offsets(self) -> dict[TopicPartition, int]: ...

    async def run_summary(self, run_id: str) -> dict[str, Any] | None: ...


class BlockingHistorySource(Protocol):
    """The same, synchronous (`SqliteReadModels`: short local queries)."""

    def timeline(
        self, key: str, after_offset: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]: ...

    def offsets(self) -> dict[TopicPartition, int]: ...

    def run_summary(self, run_id: str) -> dict[str, Any] | None: ...


class _Awaited:
    """A `BlockingHistorySource` behind the async interface, called in place."""

    def __init__(self, store: BlockingHistorySource) -> None:
        self.store = store

    async def timeline(
        self, key: str, after_offset: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        return self.store.timeline(key, after_offset, limit)

    async def offsets(self) -> dict[TopicPartition, int]:
        return self.store.offsets()

    async def run_summary(self, run_id: str) -> dict[str, Any] | None:
        return self.store.run_summary(run_id)


def _async_history(history: HistorySource | BlockingHistorySource) -> HistorySource:
    if inspect.iscoroutinefunction(history.timeline):
        return cast(HistorySource, history)
    return _Awaited(cast(BlockingHistorySource, history))


# --- the hub --------------------------------------------------------------------------


_Item = TypeVar("_Item")


class _Queue(Generic[_Item]):
    """A subscriber's bounded queue: `push` from the hub's tail, `take` by its stream.
    An item counts as `size` entries (a run's batch: its events); past `limit`
    entries it is marked overflowed (the stream tells its client to resync).

    A waiting `take` parks on a bare future made for that wait (no `asyncio.Event`
    and no `asyncio.timeout` per subscriber): thousands of idle streams cost less
    memory, and a wake-up is one `set_result`."""

    __slots__ = ("_waiter", "closed", "items", "limit", "overflowed", "queued")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[_Item] = []
        self.queued = 0
        self.overflowed = False
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def push(self, item: _Item, size: int = 1) -> bool:
        """Queue `item`; False (and marked overflowed) when the queue is full."""
        if self.queued + size > self.limit:
            self.overflowed = True
            self.wake()
            return False
        self.items.append(item)
        self.queued += size
        self.wake()
        return True

    def close(self) -> None:
        self.closed = True
        self.wake()

    def wake(self) -> None:
        """End a waiting `take` (it returns what is queued)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self, timeout: float | None) -> list[_Item]:
        """What is queued, waiting up to `timeout` s for something (empty if nothing came)."""
        if not self.items and not (self.overflowed or self.closed):
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _resolve, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        batch = self.items
        self.items = []
        self.queued = 0
        return batch


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


DirectWrite = Callable[[bytes], Coroutine[Any, Any, None]]


class _Direct:
    """A subscriber the hub's dispatch writes to itself, while its stream waits.

    Armed by the stream only when nothing is queued for it and no write of its own is
    under way, so the dispatch's writes follow everything the stream sent, in order.
    A write that cannot finish at once (the client reads slowly: its socket buffer is
    full) goes on in a task (`pending`) and disarms it: what comes next is queued
    (bounded, as for every subscriber) and the stream sends it after that write."""

    __slots__ = ("ended", "error", "last", "pending", "seen", "write", "wrote_at")

    def __init__(self, write: DirectWrite, seen: set[str]) -> None:
        self.write = write
        self.seen = seen  # ids the stream sent from history
        self.last = -1  # the last offset sent
        self.ended = False  # the run's end went out
        self.pending: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.wrote_at = 0.0  # loop time of the last write


class _Subscriber(_Queue[_Live]):
    __slots__ = ("direct", "handoff", "partition", "run_id")

    def __init__(self, run_id: str, partition: int, handoff: int, limit: int) -> None:
        super().__init__(limit)
        self.run_id = run_id
        self.partition = partition
        self.handoff = handoff
        self.direct: _Direct | None = None  # set while the dispatch may write to it

    def arm(self, direct: _Direct, last: int) -> bool:
        """Let the dispatch write to the client itself, if nothing is queued."""
        if self.items or self.overflowed or self.closed or direct.pending or direct.ended:
            return False
        direct.last = last
        self.direct = direct
        return True

    def disarm(self) -> None:
        self.direct = None


class FanoutHub:
    """Tails `aob.runs` once and hands each run's events to that run's subscribers.

    Start it with `await hub.start()` (from the log's current end), stop it with
    `await hub.stop()`; clients consume `hub.stream(...)`.
    """

    def __init__(
        self,
        source: TailSource,
        history: HistorySource | BlockingHistorySource,
        *,
        queue_limit: int = 10_000,
        topic: str = RUNS_TOPIC,
        read_batch: int = 1000,
    ) -> None:
        self.source = source
        self.history = _async_history(history)
        self.queue_limit = queue_limit
        self.topic = topic
        self.read_batch = read_batch
        self._partitions = 0
        self._positions: list[int] = []
        self._subs: dict[str, set[_Subscriber]] = {}
        # Ids of the events dispatched live per subscribed run: a copy the log holds
        # again (a producer's retry) is dropped once here, not by every subscriber.
        self._live_ids: dict[str, set[str]] = {}
        self._per_partition: list[int] = []
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # subscribers dropped for reading too slowly
        # Every run's row as it changes, for lists of runs (GET /api/v1/streams/runs).
        self.run_changes = RunChangeFeed(self.history, topic=topic)

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping.clear()
        self._partitions = await self.source.partitions(self.topic)
        ends = await self.source.end_offsets(self.topic)
        self._positions = [ends.get(p, 0) for p in range(self._partitions)]
        self._per_partition = [0] * self._partitions
        self._task = asyncio.create_task(self._tail(), name="fanout-tail")
        self.run_changes.start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.run_changes.stop()
        self.close_streams()

    def close_streams(self) -> None:
        """End every run stream with `StreamBroken("shutdown")` (the server stops)."""
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()

    @property
    def subscribers(self) -> int:
        return sum(self._per_partition)

    # --- subscribing ----------------------------------------------------------------

    async def stream(
        self,
        run_id: str,
        *,
        after: int | None,
        filter: StreamFilter | None = None,
        heartbeat: float | None = None,
        direct: DirectWrite | None = None,
    ) -> AsyncGenerator[Batch, None]:
        """The run's events after offset `after` (-1: from the start; None: from now on),
        in batches: whatever is ready at once goes out in one write.

        Ends with `StreamEnd` once the run's outcome has been sent (at once when the
        run ended at or before `after`), or with `StreamBroken`. Yields `Heartbeat`
        after `heartbeat` s without events.

        `direct`: writes bytes to the client (e.g. an ASGI body `send`). Given, the
        hub's dispatch writes live batches to it itself while the stream waits (see
        `_Direct`); those are not yielded. The caller must write what is yielded
        before it asks for more, as an `async for` does.
        """
        wanted = filter or StreamFilter()
        if self._task is not None:
            await self._catch_up_idle(partition_for(run_id, self._partitions))
        sub = self._subscribe(run_id)
        try:
            last = sub.handoff - 1 if after is None else after
            backlog, ended = await self._backlog(run_id, sub, last)
            seen: set[str] = set()  # ids sent from history: the log may hold them again
            for start in range(0, len(backlog), _HISTORY_BATCH):
                chunk = backlog[start : start + _HISTORY_BATCH]
                items, last, finished = self._batch(run_id, chunk, last, wanted, seen)
                if items:
                    yield items
                if finished:
                    return
            if ended is not None:
                yield Batch([StreamEnd(run_id, ended, last if last >= 0 else None)])
                return
            writer = _Direct(direct, seen) if direct is not None and wanted.everything else None
            loop = asyncio.get_running_loop()
            wait = heartbeat
            while True:
                armed = writer is not None and sub.arm(writer, last)
                parked = loop.time()
                live = await sub.take(wait)
                wait = heartbeat
                if writer is not None:
                    if armed:
                        sub.disarm()
                        last = writer.last
                    await _settle(writer)
                    if writer.ended:
                        return
                broken = sub.overflowed or sub.closed
                if not live and not broken:
                    if writer is not None and heartbeat is not None and writer.wrote_at > parked:
                        # The dispatch wrote meanwhile: a heartbeat is due that much later.
                        wait = heartbeat - (loop.time() - writer.wrote_at)
                        continue
                    yield Batch([Heartbeat()])
                    continue
                if self._shared(live, last, wanted, seen):
                    items, last, finished = _joined(live)
                else:
                    events = [event for part in live for event in part.events]
                    items, last, finished = self._batch(run_id, events, last, wanted, seen)
                    if live and not finished:
                        last = max(last, live[-1].last)  # past dropped duplicates too
                if broken and not finished:
                    reason = "overflow" if sub.overflowed else "shutdown"
                    items = Batch([*items, StreamBroken(reason, last if last >= 0 else None)])
                if items:
                    yield items
                if finished or broken:
                    return
        finally:
            self._unsubscribe(sub)

    @staticmethod
    def _shared(live: list[_Live], last: int, wanted: StreamFilter, seen: set[str]) -> bool:
        """Whether the subscriber sends these batches as they are: it wants every event,
        has sent none of them (by offset, or by id from its history)."""
        if not live or not wanted.everything or live[0].first <= last:
            return False
        return not seen or all(seen.isdisjoint(part.ids) for part in live)

    @staticmethod
    def _batch(
        run_id: str, events: list[RunEvent], last: int, wanted: StreamFilter, seen: set[str]
    ) -> tuple[Batch, int, bool]:
        """What to send of `events`, the new last offset, and whether the run has ended."""
        items = Batch()
        for event in events:
            if event.offset <= last:
                continue  # already sent from history
            last = event.offset
            # The log is at-least-once: a producer retry can store an event twice.
            if event.event_id in seen:
                continue
            seen.add(event.event_id)
            if wanted.accepts(event):
                items.append(event)
            if event.terminal_status:
                items.append(StreamEnd(run_id, event.terminal_status, event.offset))
                return items, last, True
        return items, last, False

    def _subscribe(self, run_id: str) -> _Subscriber:
        if self._task is None:
            raise RuntimeError("the fanout hub is not running")
        partition = partition_for(run_id, self._partitions)
        sub = _Subscriber(run_id, partition, self._positions[partition], self.queue_limit)
        if run_id not in self._subs:
            self._subs[run_id] = set()
            self._live_ids[run_id] = set()
        self._subs[run_id].add(sub)
        self._per_partition[partition] += 1
        return sub

    def _unsubscribe(self, sub: _Subscriber) -> None:
        subs = self._subs.get(sub.run_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.run_id]
            del self._live_ids[sub.run_id]
        self._per_partition[sub.partition] -= 1

    # --- history --------------------------------------------------------------------

    async def _backlog(
        self, run_id: str, sub: _Subscriber, after: int
    ) -> tuple[list[RunEvent], str | None]:
        """Events in (after, handoff) in offset order, and the run's status if it ended
        at or before `after` (then no further outcome event will come)."""
        run = await self.history.run_summary(run_id)  # before the timeline: see `ended` below
        status = run["status"] if run else None
        tp = TopicPartition(self.topic, sub.partition)
        projected = (await self.history.offsets()).get(tp, 0)
        events: dict[int, RunEvent] = {}
        outcome_after = False  # the run's outcome event lies after `after`
        cursor = after
        while True:
            rows = await self.history.timeline(run_id, after_offset=cursor, limit=1000)
            for row in rows:
                if row["topic"] != self.topic:
                    continue
                outcome_after = outcome_after or row["type"] in TERMINAL_STATUS
                if row["offset"] < sub.handoff:
                    events[row["offset"]] = RunEvent.from_row(run_id, row)
            if len(rows) < 1000:
                break
            cursor = rows[-1]["offset"]
        # The read models may lag the tail: read what they lack straight from the log
        # (all of it, even at or before `after`, to see an outcome the client has seen).
        offset = projected
        while offset < sub.handoff:
            records = await self.source.read(self.topic, sub.partition, offset, self.read_batch)
            for record in records:
                if record.offset >= sub.handoff or record.key != run_id:
                    continue
                event = _decode(record)
                if event is None:
                    continue
                if record.offset > after:
                    events.setdefault(record.offset, RunEvent.from_record(record, event))
                elif event.type in TERMINAL_STATUS:
                    status = TERMINAL_STATUS[event.type]
            if not records:
                break
            offset = records[-1].offset + 1
        outcome_after = outcome_after or any(e.terminal_status for e in events.values())
        # `status` was read before the timeline, so a finished run's outcome event is
        # in the timeline or the log read; if it is not after `after`, the client saw it.
        ended = status if status in FINISHED_RUN and not outcome_after else None
        return [events[k] for k in sorted(events)], ended

    # --- the tail -------------------------------------------------------------------

    async def _tail(self) -> None:
        loop = asyncio.get_running_loop()
        skipped = loop.time()  # start() read the ends
        while not self._stopping.is_set():
            try:
                started = loop.time()
                if await self._read_subscribed():
                    await self._pause_after_dispatch(loop.time() - started)
                else:
                    await self.source.wait_for_append(0.5, (self.topic,))
                    if loop.time() - skipped >= _IDLE_SKIP_S:
                        await self._skip_idle()
                        skipped = loop.time()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep serving; a broken log shows in /health
                log.exception("fanout tail failed; retrying")
                await asyncio.sleep(1.0)

    async def _pause_after_dispatch(self, dispatching: float) -> None:
        """Leave the event loop to the rest of the process for as long as the round
        of writes took (the dispatch's own writes, `dispatching` s with the read, and
        the subscribers woken to take their batches), at least a millisecond, and let
        records gather meanwhile: with many subscribers in one process with the
        engine, fanning out must not starve the engine that makes the events, and
        the next batches grow with what a round of writes costs (the cost is per
        write, not per byte). A fixed linger on top of that only added latency:
        at 1,000 subscribers it was 50 ms per round."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0)  # runs after the subscribers' wake-ups queued before it
        took = loop.time() - started + dispatching
        await asyncio.sleep(max(_MIN_PAUSE_S, min(took, _MAX_YIELD_S)))

    async def _read_subscribed(self) -> bool:
        """Read and dispatch the next records of partitions that have subscribers."""
        found = False
        for partition in range(self._partitions):
            if self._idle(partition):
                continue
            records = await self.source.read(
                self.topic, partition, self._positions[partition], self.read_batch
            )
            if records:
                # No await between this and the dispatch: see the module docstring.
                self._positions[partition] = records[-1].offset + 1
                self._dispatch(records)
                found = True
        return found

    async def _skip_idle(self) -> None:
        """Move partitions nobody listens to to their end, so they are never read."""
        ends = await self.source.end_offsets(self.topic)
        for partition in range(self._partitions):
            if self._idle(partition):
                self._positions[partition] = max(self._positions[partition], ends[partition])

    async def _catch_up_idle(self, partition: int) -> None:
        """Move `partition` to its end if nobody listens to it, right before a stream
        subscribes: its handoff is then now, however long ago the last skip was."""
        if self._idle(partition):
            end = (await self.source.end_offsets(self.topic)).get(partition, 0)
            if self._idle(partition):  # still: nobody subscribed during the await
                self._positions[partition] = max(self._positions[partition], end)

    def _idle(self, partition: int) -> bool:
        return not self._per_partition[partition] and not self.run_changes.active

    def _dispatch(self, records: list[Record]) -> None:
        """Hand each subscribed run its new events: one shared batch per run."""
        watching = self.run_changes.active
        runs: dict[str, tuple[list[RunEvent], int, int]] = {}
        for record in records:
            subscribed = record.key in self._subs
            if not subscribed and not watching:
                continue
            event = _decode(record)
            if event is None:
                continue
            if watching:
                self.run_changes.observe(record, event)
            if not subscribed:
                continue
            events, first, _ = runs.get(record.key) or ([], record.offset, 0)
            runs[record.key] = (events, first, record.offset)
            ids = self._live_ids[record.key]
            if event.event_id not in ids:
                ids.add(event.event_id)
                events.append(RunEvent.from_record(record, event))
        now = asyncio.get_running_loop().time()
        for run_id, (events, first, last) in runs.items():
            live = _Live(run_id, events, first, last)
            for sub in list(self._subs[run_id]):
                direct = sub.direct
                if direct is not None and _write_directly(sub, direct, live, now):
                    continue
                sub.disarm()  # once something is queued, the stream sends what follows
                if not sub.push(live, live.size):
                    self.dropped += 1
                    self._unsubscribe(sub)


_EVERYTHING: Final = StreamFilter()


def _write_directly(sub: _Subscriber, direct: _Direct, live: _Live, now: float) -> bool:
    """Write `live` to an armed subscriber's client from the dispatch; False when the
    stream must send it itself (it overlaps what the stream sent from history)."""
    if not FanoutHub._shared([live], direct.last, _EVERYTHING, direct.seen):
        return False
    if live.batch:
        try:
            direct.pending = _run_eagerly(direct.write(live.batch.sse))
        except Exception as error:  # the stream raises it, as its own write would
            direct.error = error
        direct.wrote_at = now
    direct.last = live.last
    direct.ended = live.finished
    if direct.pending is not None or direct.ended or direct.error is not None:
        sub.disarm()
        sub.wake()  # the stream waits for that write, then sends what is queued, or ends
    return True


async def _settle(direct: _Direct) -> None:
    """Wait for the dispatch's unfinished write, if any; raise what a write raised."""
    if direct.pending is not None:
        pending, direct.pending = direct.pending, None
        await pending
    if direct.error is not None:
        raise direct.error


def _run_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Future[None] | None:
    """Run `coro` in place up to its first wait: None when it finished without one (a
    write the socket took at once: the usual case), else a task that carries it on.

    What Python 3.12's eager tasks do; here it spares a task and a trip through the
    event loop per subscriber and write."""
    try:
        waiting_for = coro.send(None)
    except StopIteration:
        return None
    except BaseException:
        coro.close()
        raise
    task = asyncio.ensure_future(_carry_on(coro, waiting_for))
    task.add_done_callback(_retrieved)
    return task


async def _carry_on(coro: Coroutine[Any, Any, None], waiting_for: Any) -> None:
    """Go on with `coro` where it yielded `waiting_for`: a future to wait for (its
    outcome is for `coro` to read when it resumes), or None (a bare yield: run again
    soon), as a task does."""
    try:
        while True:
            if waiting_for is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait((waiting_for,))
            waiting_for = coro.send(None)
    except StopIteration:
        return
    finally:
        coro.close()  # a no-op once it has finished; on cancellation, runs its cleanup


def _retrieved(task: asyncio.Future[None]) -> None:
    """Mark a failed write's error as seen: its stream may have gone already."""
    if not task.cancelled():
        task.exception()


def _joined(live: list[_Live]) -> tuple[Batch, int, bool]:
    """Shared batches as one: the batch itself when there is one (its bytes are joined
    already), up to the run's end."""
    if len(live) == 1:
        return live[0].batch, live[0].last, live[0].finished
    items = Batch()
    for part in live:
        items.extend(part.batch)
        if part.finished:
            return items, part.last, True
    return items, live[-1].last, False


def _decode(record: Record) -> Event | None:
    try:
        return decode(record.value)
    except CodecError:
        log.warning(
            "fanout: skipping unreadable record %s[%d]@%d",
            record.topic,
            record.partition,
            record.offset,
        )
        return None


# --- run changes: the runs of a tenant as their rows change, for lists of runs ------------

# Events that change a run's row in a list of runs (its status, or the run itself).
RUN_ROW_EVENTS: Final = frozenset(
    {
        "RunSubmitted",
        "ApprovalRequested",
        "ApprovalDecided",
        "PatchProposed",
        "PatchApplied",
        "PatchRejected",
        "PatchReviewRequested",
        "PatchReviewed",
        *TERMINAL_STATUS,
    }
)
# What a change carries of the run's row: what a list shows, never inputs or outputs
# (unbounded in size).
RUN_ROW_FIELDS: Final = (
    "run_id",
    "workflow_id",
    "version",
    "tag",
    "status",
    "error",
    "submitted_at",
    "submitted_by",
    "updated_at",
    "finished_at",
    "tenant",
)
_PROJECTION_WAIT_S: Final = 5.0  # then a change goes out with the row as it is
_PROJECTION_POLL_S: Final = 0.02


class RunChange:
    """A run's row after an event changed it, numbered in the feed (`seq`)."""

    __slots__ = ("row", "seq", "sse", "tenant")

    def __init__(self, epoch: str, seq: int, row: Mapping[str, Any]) -> None:
        self.seq = seq
        self.row = {name: row.get(name) for name in RUN_ROW_FIELDS}
        self.tenant: str | None = row.get("tenant")
        body = _dumps({"id": f"{epoch}:{seq}", **self.row})
        self.sse = f"id: {epoch}:{seq}\r\nevent: run\r\ndata: {body}\r\n\r\n".encode()


@dataclass(frozen=True, slots=True)
class FeedReady:
    """A runs feed's first item. `resync`: the client's own copy may have missed
    changes (a new stream, or one the feed cannot resume): load it afresh now, after
    subscribing, and apply the changes that follow."""

    position: str
    resync: bool

    @property
    def sse(self) -> bytes:
        body = _dumps({"id": self.position, "resync": self.resync})
        return f"id: {self.position}\r\nevent: ready\r\ndata: {body}\r\n\r\n".encode()


FeedItem = RunChange | FeedReady | StreamBroken | Heartbeat


class _FeedSubscriber(_Queue[RunChange]):
    __slots__ = ("tenant",)

    def __init__(self, tenant: str | None, limit: int) -> None:
        super().__init__(limit)
        self.tenant = tenant


class RunChangeFeed:
    """Run rows as events change them, for every tenant's lists of runs.

    The hub's tail hands it (while it has subscribers) each event that changes a run's
    row; one resolver task waits until the read models have projected the event and
    reads the run's row there once, for every subscriber: a client that loads its list
    from the read models and applies the changes that follow never goes back in time.

    Resuming: changes are numbered `epoch:seq`; the last `ring` of them are kept, so a
    client that comes back with a recent id (`Last-Event-ID`) gets exactly what it
    missed. An id the ring cannot answer for (too old, another process, or the feed
    lost changes: no subscriber for a while, a full pending queue) gets `ready` with
    `resync`: reload, then follow. Memory is bounded: `ring` changes, `pending_limit`
    events to resolve, `queue_limit` changes per subscriber (past it, it is dropped
    with a `reconnect` notice and resumes).
    """

    def __init__(
        self,
        history: HistorySource,
        *,
        topic: str = RUNS_TOPIC,
        ring: int = 2000,
        pending_limit: int = 10_000,
        queue_limit: int = 1000,
    ) -> None:
        self.history = history
        self.topic = topic
        self.queue_limit = queue_limit
        self.pending_limit = pending_limit
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self._ring: deque[RunChange] = deque(maxlen=ring)
        self._pending: deque[tuple[int, int, str]] = deque()  # partition, offset, run id
        self._pending_ready = asyncio.Event()
        self._subs: set[_FeedSubscriber] = set()
        self._task: asyncio.Task[None] | None = None
        # The last row sent of recent runs: an event that left the row as it was
        # (two events projected together) sends nothing.
        self._last_rows: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._last_rows_limit = ring
        self.dropped = 0

    @property
    def active(self) -> bool:
        """Whether anyone listens: only then does the hub hand events over."""
        return bool(self._subs)

    def start(self) -> None:
        self._task = asyncio.create_task(self._resolve_forever(), name="fanout-run-changes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for sub in list(self._subs):
            sub.close()

    def observe(self, record: Record, event: Event) -> None:
        """From the hub's tail (no await): note an event that may change a run's row."""
        if event.type not in RUN_ROW_EVENTS:
            return
        if len(self._pending) >= self.pending_limit:
            self._forget("pending changes overflowed")
            return
        self._pending.append((record.partition, record.offset, record.key))
        self._pending_ready.set()

    def _forget(self, why: str) -> None:
        """Changes were lost: no id from before can be resumed exactly."""
        log.info("runs feed: %s; clients resync", why)
        self._pending.clear()
        self._ring.clear()
        self._last_rows.clear()
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        for sub in list(self._subs):
            sub.overflowed = True
            sub.wake()

    # --- subscribing ----------------------------------------------------------------

    async def stream(
        self, tenant: str | None, *, after: str | None, heartbeat: float | None = None
    ) -> AsyncGenerator[list[FeedItem], None]:
        """`ready` (with the missed changes after `after` when the ring has them), then
        each change of a run of `tenant` (None: every tenant's) as it is projected."""
        sub = _FeedSubscriber(tenant, self.queue_limit)
        self._subs.add(sub)
        try:
            # Registered and read from the ring in one step: nothing slips between.
            resumed = self._resume(after)
            last = self.seq if resumed is None else resumed
            backlog = [c for c in self._ring if c.seq > last and _visible(c, tenant)]
            first: list[FeedItem] = [FeedReady(f"{self.epoch}:{last}", resumed is None)]
            yield [*first, *backlog]
            if backlog:
                last = backlog[-1].seq
            epoch = self.epoch
            while True:
                changes = await sub.take(heartbeat)
                broken = sub.overflowed or sub.closed or epoch != self.epoch
                items: list[FeedItem] = [c for c in changes if c.seq > last and _visible(c, tenant)]
                if items:
                    last = max(c.seq for c in changes)
                if broken:
                    reason = "shutdown" if sub.closed else "overflow"
                    items.append(StreamBroken(reason, None))
                elif not changes:
                    items.append(Heartbeat())
                if items:
                    yield items
                if broken:
                    return
        finally:
            self._subs.discard(sub)
            if not self._subs:
                # Nobody follows: the tail stops handing events over, so the ring would
                # have a gap. Start a new epoch rather than resume across it.
                self._ring.clear()
                self._last_rows.clear()
                self.epoch = secrets.token_hex(4)
                self.seq = 0

    def _resume(self, after: str | None) -> int | None:
        """The seq to resume after, or None when `after` cannot be resumed exactly."""
        if not after:
            return None
        epoch, _, number = after.partition(":")
        if epoch != self.epoch or not (number.isascii() and number.isdigit()):
            return None
        seq = int(number)
        oldest = self._ring[0].seq if self._ring else self.seq + 1
        if seq > self.seq or seq < oldest - 1:
            return None
        return seq

    # --- resolving ------------------------------------------------------------------

    async def _resolve_forever(self) -> None:
        while True:
            await self._pending_ready.wait()
            self._pending_ready.clear()
            batch = list(self._pending)
            self._pending.clear()
            if not batch:
                continue
            try:
                await self._resolve(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep serving; clients resync
                log.exception("runs feed: cannot read run rows")
                self._forget("a read of the read models failed")

    async def _resolve(self, batch: list[tuple[int, int, str]]) -> None:
        epoch = self.epoch
        await self._until_projected(batch)
        for run_id in dict.fromkeys(run_id for _, _, run_id in batch):
            row = await self.history.run_summary(run_id)  # its row, without nodes
            if row is None or epoch != self.epoch:
                continue
            change = RunChange(self.epoch, self.seq + 1, row)
            if self._last_rows.get(run_id) == change.row:
                continue
            self._remember(run_id, change.row)
            self.seq += 1
            self._ring.append(change)
            for sub in list(self._subs):
                if _visible(change, sub.tenant) and not sub.push(change):
                    self.dropped += 1

    def _remember(self, run_id: str, row: dict[str, Any]) -> None:
        self._last_rows[run_id] = row
        self._last_rows.move_to_end(run_id)
        if len(self._last_rows) > self._last_rows_limit:
            self._last_rows.popitem(last=False)

    async def _until_projected(self, batch: list[tuple[int, int, str]]) -> None:
        """Wait (a bounded time) until the read models have applied every event of
        `batch`, so that the rows read next show them."""
        needed: dict[int, int] = {}
        for partition, offset, _ in batch:
            needed[partition] = max(needed.get(partition, 0), offset + 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _PROJECTION_WAIT_S
        while True:
            projected = await self.history.offsets()
            behind = [
                p
                for p, end in needed.items()
                if projected.get(TopicPartition(self.topic, p), 0) < end
            ]
            if not behind or loop.time() > deadline:
                return
            await asyncio.sleep(_PROJECTION_POLL_S)


def _visible(change: RunChange, tenant: str | None) -> bool:
    return tenant is None or change.tenant == tenant
