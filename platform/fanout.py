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
batch (one write). After each dispatch the tail pauses at least as long as the
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
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol, cast

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
_LINGER_PER_SUBSCRIBER_S: Final = 0.00005
_MAX_LINGER_S: Final = 0.05
_MAX_YIELD_S: Final = 0.5  # cap of the pause that matches the subscribers' time
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


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """Which events a subscriber wants.

    `nodes`: only events of these nodes (plus the run's outcome); `errors_only`: only
    failures (failed nodes and runs, rejected patches, skips with a warning).
    """

    nodes: frozenset[str] = frozenset()
    errors_only: bool = False

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

    async def wait_for_append(self, timeout: float) -> None: ...


class HistorySource(Protocol):
    """What the hub reads history with: the read models (`AsyncReadModels`)."""

    async def timeline(
        self, key: str, after_offset: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]: ...

    async def offsets(self) -> dict[TopicPartition, int]: ...

    async def get_run(self, run_id: str) -> dict[str, Any] | None: ...


class BlockingHistorySource(Protocol):
    """The same, synchronous (`SqliteReadModels`: short local queries)."""

    def timeline(
        self, key: str, after_offset: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]: ...

    def offsets(self) -> dict[TopicPartition, int]: ...

    def get_run(self, run_id: str) -> dict[str, Any] | None: ...


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

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self.store.get_run(run_id)


def _async_history(history: HistorySource | BlockingHistorySource) -> HistorySource:
    if inspect.iscoroutinefunction(history.timeline):
        return cast(HistorySource, history)
    return _Awaited(cast(BlockingHistorySource, history))


# --- the hub --------------------------------------------------------------------------


class _Subscriber:
    __slots__ = (
        "closed",
        "handoff",
        "items",
        "limit",
        "overflowed",
        "partition",
        "run_id",
        "wakeup",
    )

    def __init__(self, run_id: str, partition: int, handoff: int, limit: int) -> None:
        self.run_id = run_id
        self.partition = partition
        self.handoff = handoff
        self.limit = limit
        self.items: deque[RunEvent] = deque()
        self.wakeup = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def push(self, event: RunEvent) -> bool:
        """Queue `event`; False (and marked overflowed) when the queue is full."""
        if len(self.items) >= self.limit:
            self.overflowed = True
            self.wakeup.set()
            return False
        self.items.append(event)
        self.wakeup.set()
        return True

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()

    async def take(self, timeout: float | None) -> list[RunEvent]:
        """What is queued, waiting up to `timeout` s for something (empty if nothing came)."""
        if not self.items and not (self.overflowed or self.closed):
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wakeup.wait()
        batch = list(self.items)
        self.items.clear()
        return batch


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
        self._per_partition: list[int] = []
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # subscribers dropped for reading too slowly

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping.clear()
        self._partitions = await self.source.partitions(self.topic)
        ends = await self.source.end_offsets(self.topic)
        self._positions = [ends.get(p, 0) for p in range(self._partitions)]
        self._per_partition = [0] * self._partitions
        self._task = asyncio.create_task(self._tail(), name="fanout-tail")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
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
    ) -> AsyncGenerator[list[StreamItem], None]:
        """The run's events after offset `after` (-1: from the start; None: from now on),
        in batches: whatever is ready at once goes out in one write.

        Ends with `StreamEnd` once the run's outcome has been sent (at once when the
        run ended at or before `after`), or with `StreamBroken`. Yields `Heartbeat`
        after `heartbeat` s without events.
        """
        wanted = filter or StreamFilter()
        sub = self._subscribe(run_id)
        try:
            last = sub.handoff - 1 if after is None else after
            backlog, ended = await self._backlog(run_id, sub, last)
            seen: set[str] = set()
            for start in range(0, len(backlog), _HISTORY_BATCH):
                chunk = backlog[start : start + _HISTORY_BATCH]
                items, last, finished = self._batch(run_id, chunk, last, wanted, seen)
                if items:
                    yield items
                if finished:
                    return
            if ended is not None:
                yield [StreamEnd(run_id, ended, last if last >= 0 else None)]
                return
            while True:
                events = await sub.take(heartbeat)
                broken = sub.overflowed or sub.closed
                if not events and not broken:
                    yield [Heartbeat()]
                    continue
                items, last, finished = self._batch(run_id, events, last, wanted, seen)
                if broken and not finished:
                    reason = "overflow" if sub.overflowed else "shutdown"
                    items.append(StreamBroken(reason, last if last >= 0 else None))
                if items:
                    yield items
                if finished or broken:
                    return
        finally:
            self._unsubscribe(sub)

    @staticmethod
    def _batch(
        run_id: str, events: list[RunEvent], last: int, wanted: StreamFilter, seen: set[str]
    ) -> tuple[list[StreamItem], int, bool]:
        """What to send of `events`, the new last offset, and whether the run has ended."""
        items: list[StreamItem] = []
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
        self._subs.setdefault(run_id, set()).add(sub)
        self._per_partition[partition] += 1
        return sub

    def _unsubscribe(self, sub: _Subscriber) -> None:
        subs = self._subs.get(sub.run_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.run_id]
        self._per_partition[sub.partition] -= 1

    # --- history --------------------------------------------------------------------

    async def _backlog(
        self, run_id: str, sub: _Subscriber, after: int
    ) -> tuple[list[RunEvent], str | None]:
        """Events in (after, handoff) in offset order, and the run's status if it ended
        at or before `after` (then no further outcome event will come)."""
        run = await self.history.get_run(run_id)  # before the timeline: see `ended` below
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
        while not self._stopping.is_set():
            try:
                if await self._read_subscribed():
                    await self._pause_after_dispatch()
                else:
                    await self.source.wait_for_append(0.5)
                    await self._skip_idle()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep serving; a broken log shows in /health
                log.exception("fanout tail failed; retrying")
                await asyncio.sleep(1.0)

    async def _pause_after_dispatch(self) -> None:
        """Let records gather before the next read, and leave the event loop to the
        rest of the process for at least as long as the subscribers just took to
        take their batches: with many subscribers in one process with the engine,
        fanning out must not starve the engine that makes the events."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0)  # runs after the subscribers' wake-ups queued before it
        took = loop.time() - started
        await asyncio.sleep(max(self._linger(), min(took, _MAX_YIELD_S)))

    def _linger(self) -> float:
        """How long to let records gather after a read. A lone event goes out at once
        (the tail reads as soon as it is appended); a stream of them goes out in
        batches, one write per subscriber per batch, which is what many subscribers
        need (the cost is per write, not per byte)."""
        return min(_MAX_LINGER_S, _LINGER_PER_SUBSCRIBER_S * self.subscribers)

    async def _read_subscribed(self) -> bool:
        """Read and dispatch the next records of partitions that have subscribers."""
        found = False
        for partition in range(self._partitions):
            if not self._per_partition[partition]:
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
            if not self._per_partition[partition]:
                self._positions[partition] = max(self._positions[partition], ends[partition])

    def _dispatch(self, records: list[Record]) -> None:
        for record in records:
            subs = self._subs.get(record.key)
            if not subs:
                continue
            event = _decode(record)
            if event is None:
                continue
            run_event = RunEvent.from_record(record, event)
            for sub in list(subs):
                if not sub.push(run_event):
                    self.dropped += 1
                    self._unsubscribe(sub)


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
