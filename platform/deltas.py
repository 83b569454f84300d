"""Live agent output beside the run stream: where deltas go, and how streams carry them.

Which store and sink a service has (`LiveDeltas`):

- embedded (`aob server dev`): one in-memory `DeltaStore`; the agent worker publishes
  into it and the stream endpoints read it, in the same process.
- cluster: agent workers publish to the Kafka topic `aob.deltas` (keyed by run id,
  `retention.ms` = `AOB_DELTA_RETENTION_MS`, and segments rolled as often, so Kafka
  itself deletes old deltas); each API or fanout process tails every partition of it
  (no consumer group: every process needs every run) into its own store, numbered by
  Kafka offset, so a cursor from one API process resumes on another.

A run stream asked with `deltas=true` carries the run's events and its deltas
(`live_stream`). Every message's id is then a cursor `OFFSET:EPOCH:POSITION`: the last
run event's log offset and the last delta's position in the store's numbering
(`EPOCH`). Resuming from a cursor sends the run events after OFFSET (as the plain run
stream does) and the retained deltas after POSITION: nothing is repeated, and nothing
still retained is lost. A fresh stream first gets the run's retained deltas (the
output so far of the node that is running).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from aob.events.log.deltas import Delta, DeltaBounds, DeltaError, DeltaSink, DeltaStore, StoredDelta
from aob.events.log.port import EventLog
from aob.events.partitioner import partition_for
from aob.events.types import RUNS_TOPIC
from aob.platform.fanout import (
    FanoutHub,
    Heartbeat,
    RunEvent,
    StreamBroken,
    StreamEnd,
    StreamFilter,
)
from aob.platform.problems import Problem
from aob.platform.settings import Settings
from aob.workers.agent.llm import LiveBounds, LivePublisher

log = logging.getLogger(__name__)

DELTAS_TOPIC: Final = "aob.deltas"
DELTA_EVENT: Final = "llm_delta"  # the SSE event name of a delta
_KAFKA_EPOCH: Final = "k"  # positions are Kafka offsets: the same in every process
# A feed that starts reads at most this many of the newest records per partition back,
# so a restarted API process can resume recent streams without reading the whole topic.
_BACKFILL_PER_PARTITION: Final = 5000
_MAX_REPLICATION: Final = 3
# A cursor's numbers: -1 or ASCII digits, at most 19 of them below 9e18 (a store holds up to
# 2**63 - 1: a larger one overflowed SQLite mid-stream, after the 200 was sent).
_CURSOR_NUMBER: Final = re.compile(r"-1|0|[1-9][0-9]{0,17}|[1-8][0-9]{18}")


def delta_bounds(settings: Settings) -> DeltaBounds:
    return DeltaBounds(
        ring=settings.delta_ring,
        run_bytes=settings.delta_run_bytes,
        runs=settings.delta_runs,
        queue=settings.delta_queue,
    )


def live_bounds(settings: Settings) -> LiveBounds:
    return LiveBounds(
        delta_bytes=settings.delta_bytes,
        flush_ms=settings.delta_flush_ms,
        attempt_bytes=settings.delta_attempt_bytes,
    )


# --- which store and sink a service has -------------------------------------------------


class LiveDeltas:
    """A service's part of the delta stream: `store` (services that serve streams) and
    `publisher` (services that run agents). Kafka clients start with `start`."""

    def __init__(self, settings: Settings, *, serves_streams: bool, runs_agents: bool) -> None:
        self.store: DeltaStore | None = None
        self.publisher: LivePublisher | None = None
        self._kafka_sink: KafkaDeltaSink | None = None
        self._feed: KafkaDeltaFeed | None = None
        bounds = delta_bounds(settings)
        if settings.kafka_bootstrap is None:
            if serves_streams or runs_agents:
                self.store = DeltaStore(bounds)
            if runs_agents and self.store is not None:
                self.publisher = LivePublisher(self.store, live_bounds(settings))
            return
        topic = f"{settings.topic_prefix}{DELTAS_TOPIC}"
        if runs_agents:
            self._kafka_sink = KafkaDeltaSink(settings, topic)
            self.publisher = LivePublisher(self._kafka_sink, live_bounds(settings))
        if serves_streams:
            self.store = DeltaStore(bounds, epoch=_KAFKA_EPOCH)
            self._feed = KafkaDeltaFeed(settings, topic, self.store)

    async def start(self) -> None:
        if self._kafka_sink is not None:
            await self._kafka_sink.start()
        if self._feed is not None:
            await self._feed.start()

    async def stop(self) -> None:
        if self.store is not None:
            self.store.close()
        if self._feed is not None:
            await self._feed.stop()
        if self._kafka_sink is not None:
            await self._kafka_sink.stop()


# --- Kafka ------------------------------------------------------------------------------


async def create_deltas_topic(settings: Settings, topic: str) -> int:
    """Create the delta topic (short retention; Kafka deletes old segments) unless it
    exists; its partition count."""
    assert settings.kafka_bootstrap is not None
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        retention = str(settings.delta_retention_ms)
        new = NewTopic(
            topic,
            settings.runs_partitions,
            max(1, min(_MAX_REPLICATION, brokers)),
            # Retention deletes whole segments: roll them as often as deltas expire.
            topic_configs={"retention.ms": retention, "segment.ms": retention},
        )
        response = await admin.create_topics([new])
        for name, code, message, *_ in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                raise RuntimeError(f"cannot create topic {name!r}: {message} (error {code})")
    finally:
        await admin.close()
    return settings.runs_partitions


class KafkaDeltaSink:
    """Publishes deltas to the delta topic, keyed by run id (one run's in order)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        await create_deltas_topic(self.settings, self.topic)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id="aob-deltas",
            acks=1,  # a lost delta loses no state; a slow one delays the node
            linger_ms=5,
        )
        await self._producer.start()

    async def publish(self, deltas: Sequence[Delta]) -> None:
        if self._producer is None:
            return
        sent = [
            await self._producer.send(self.topic, d.encode(), key=d.run_id.encode("utf-8"))
            for d in deltas
        ]
        await asyncio.gather(*sent)  # out before the node's outcome is appended

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


async def _until_known(consumer: AIOKafkaConsumer, topic: str, timeout: float = 30.0) -> None:
    """Wait until the consumer's metadata has the (maybe just created) topic: assigned
    before, its partitions would not be fetched until the next metadata refresh
    (minutes)."""
    async with asyncio.timeout(timeout):
        while not consumer.partitions_for_topic(topic):
            # A metadata refresh of the consumer's own view (`topics()` fetches a copy
            # and leaves the view the fetcher uses as it was).
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)


class KafkaDeltaFeed:
    """Tails every partition of the delta topic into `store` (positions: offsets)."""

    def __init__(self, settings: Settings, topic: str, store: DeltaStore) -> None:
        self.settings = settings
        self.topic = topic
        self.store = store
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        partitions = await create_deltas_topic(self.settings, self.topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id="aob-deltas-feed",
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=max(1, int(self.settings.kafka_poll_interval * 1000)),
        )
        await consumer.start()
        self._consumer = consumer
        await _until_known(consumer, self.topic)
        assigned = [TopicPartition(self.topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        beginnings = await consumer.beginning_offsets(assigned)
        ends = await consumer.end_offsets(assigned)
        for tp in assigned:
            consumer.seek(tp, max(beginnings[tp], ends[tp] - _BACKFILL_PER_PARTITION))
        self._task = asyncio.create_task(self._tail(consumer), name="delta-feed")

    async def _tail(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep serving; deltas are best effort
                log.warning("delta feed: cannot read %s; retrying", self.topic, exc_info=True)
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for record in records:
                    self._add(record.value, record.offset)

    def _add(self, value: bytes | None, offset: int) -> None:
        if value is None:
            return
        try:
            delta = Delta.decode(value)
        except DeltaError as error:
            log.warning("delta feed: skipping record at offset %d: %s", offset, error)
            return
        self.store.add(delta, position=offset, size=len(value))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


# --- streams with deltas ------------------------------------------------------------------


class BadCursor(ValueError):
    """A resume point that is neither an event id nor a cursor."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a stream with deltas stands: the last run event's offset (-1: none) and
    the last delta's position in `epoch`'s numbering (-1: none)."""

    offset: int
    epoch: str | None = None
    position: int = -1

    def __str__(self) -> str:
        return f"{self.offset}:{self.epoch or ''}:{self.position}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """`OFFSET:EPOCH:POSITION`, or a plain event id (no delta seen)."""
        parts = text.strip().split(":")
        numbers = parts[::2]  # OFFSET and POSITION: ASCII digits within the stores' int64
        if len(parts) in (1, 3) and all(_CURSOR_NUMBER.fullmatch(n) for n in numbers):
            offset = max(int(parts[0]), -1)
            if len(parts) == 1:
                return cls(offset)
            return cls(offset, parts[1] or None, max(int(parts[2]), -1))
        raise BadCursor(
            f"Last-Event-ID must be an event id or a cursor OFFSET:EPOCH:POSITION, got {text!r}"
        )


class CursorEvent:
    """A run event on a stream with deltas: its id is the stream's cursor."""

    __slots__ = ("cursor", "event", "sse")

    def __init__(self, event: RunEvent, cursor: Cursor) -> None:
        self.event = event
        self.cursor = str(cursor)
        self.sse = (
            f"id: {self.cursor}\r\nevent: {event.name}\r\ndata: {event.json}\r\n\r\n".encode()
        )

    @property
    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.event.json)
        message["cursor"] = self.cursor
        return message


class DeltaItem:
    """One delta, ready to send."""

    __slots__ = ("cursor", "message", "sse")

    def __init__(self, stored: StoredDelta, cursor: Cursor) -> None:
        delta = stored.delta
        self.cursor = str(cursor)
        self.message = {
            "event": DELTA_EVENT,
            "cursor": self.cursor,
            "position": stored.position,
            "run_id": delta.run_id,
            "node_id": delta.node_id,
            "iteration": delta.iteration,
            "attempt": delta.attempt,
            "kind": delta.kind,
            "data": delta.data,
        }
        body = json.dumps(self.message, separators=(",", ":"), ensure_ascii=False)
        self.sse = f"id: {self.cursor}\r\nevent: {DELTA_EVENT}\r\ndata: {body}\r\n\r\n".encode()


@dataclass(frozen=True, slots=True)
class CursorBroken(StreamBroken):
    """`reconnect`, with the cursor to come back with."""

    cursor: str = ""

    @property
    def message(self) -> dict[str, Any]:
        return {
            "event": "reconnect",
            "reason": self.reason,
            "last_event_id": self.last_event_id,
            "cursor": self.cursor,
        }

    @property
    def sse(self) -> bytes:
        body = json.dumps(self.message, separators=(",", ":"))
        return f"event: reconnect\r\ndata: {body}\r\n\r\n".encode()


LiveItem = CursorEvent | DeltaItem | StreamEnd | CursorBroken | Heartbeat


async def live_stream(
    hub: FanoutHub,
    store: DeltaStore,
    event_log: EventLog,
    run_id: str,
    *,
    resume: Cursor | None,
    from_start: bool,
    filter: StreamFilter,
    heartbeat: float | None,
) -> AsyncGenerator[list[LiveItem], None]:
    """The run stream (`hub.stream`) with the run's deltas merged in, resuming from
    `resume` (None: a new stream, from the start or from now)."""
    if resume is None:
        offset = -1 if from_start else await _now(event_log, run_id)
        resume = Cursor(offset)
    return _merged(hub, store, run_id, resume, filter, heartbeat)


async def _now(event_log: EventLog, run_id: str) -> int:
    """The offset of the run's partition's last record: "from now" as a resume point."""
    ends = await event_log.end_offsets(RUNS_TOPIC)
    return ends[partition_for(run_id, len(ends))] - 1


async def _merged(
    hub: FanoutHub,
    store: DeltaStore,
    run_id: str,
    resume: Cursor,
    wanted: StreamFilter,
    heartbeat: float | None,
) -> AsyncGenerator[list[LiveItem], None]:
    events = hub.stream(run_id, after=resume.offset, filter=wanted, heartbeat=heartbeat)
    position = resume.position if resume.epoch == store.epoch else None
    sub = store.subscribe(run_id, position, resume.epoch)
    cursor = Cursor(resume.offset, store.epoch, position if position is not None else -1)
    next_events: asyncio.Future[list[Any]] = asyncio.ensure_future(anext(events))

    def deltas(stored: list[StoredDelta]) -> list[LiveItem]:
        nonlocal cursor
        items: list[LiveItem] = []
        for item in stored:
            cursor = Cursor(cursor.offset, cursor.epoch, item.position)
            if not wanted.errors_only and (not wanted.nodes or item.delta.node_id in wanted.nodes):
                items.append(DeltaItem(item, cursor))
        return items

    try:
        first = deltas(sub.backlog)
        if first:
            yield first
        while True:
            wake: asyncio.Future[Any] = asyncio.ensure_future(sub.wakeup.wait())
            await asyncio.wait({next_events, wake}, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            items = deltas(sub.take())
            if sub.overflowed or (sub.closed and not next_events.done()):
                reason = "overflow" if sub.overflowed else "shutdown"
                items.append(CursorBroken(reason, _offset(cursor), str(cursor)))
                yield items
                return
            if next_events.done():
                try:
                    batch = next_events.result()
                except StopAsyncIteration:
                    if items:
                        yield items
                    return
                ended = False
                for item in batch:
                    if isinstance(item, RunEvent):
                        cursor = Cursor(item.offset, cursor.epoch, cursor.position)
                        items.append(CursorEvent(item, cursor))
                    elif isinstance(item, StreamBroken):
                        items.append(CursorBroken(item.reason, _offset(cursor), str(cursor)))
                        ended = True
                    else:
                        items.append(item)
                        ended = ended or isinstance(item, StreamEnd)
                if ended:
                    yield items
                    return
                next_events = asyncio.ensure_future(anext(events))
            if items:
                yield items
    finally:
        next_events.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await next_events
        await events.aclose()
        store.unsubscribe(sub)


def _offset(cursor: Cursor) -> int | None:
    return cursor.offset if cursor.offset >= 0 else None


async def sse_body(
    items: AsyncGenerator[list[LiveItem], None], retry_ms: int
) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(items):
        yield f"retry: {retry_ms}\r\n\r\n".encode()
        async for batch in items:
            yield b"".join(item.sse for item in batch)


__all__ = [
    "DELTAS_TOPIC",
    "BadCursor",
    "Cursor",
    "DeltaSink",
    "LiveDeltas",
    "live_stream",
    "open_live_stream",
    "sse_body",
]


async def open_live_stream(
    state: Any,
    run_id: str,
    *,
    from_start: bool,
    cursor: str | None,
    last_event_id: int | None,
    filter: StreamFilter,
    heartbeat: float | None,
) -> AsyncGenerator[list[LiveItem], None]:
    """The stream endpoints' `deltas=true` (`state`: the app's state, with `engine` and
    `fanout`): the run stream with deltas, from `cursor` (the Last-Event-ID header or
    the `cursor` parameter), else `last_event_id`, else from the start or from now."""
    engine = state.engine
    store = engine.deltas.store if engine.deltas is not None else None
    if store is None:
        raise Problem(404, "not-found", "No live output here", "this service serves no streams")
    resume: Cursor | None = None
    if cursor is not None and cursor.strip():
        try:
            resume = Cursor.parse(cursor)
        except BadCursor as error:
            raise Problem(400, "bad-request", "Bad Last-Event-ID", str(error)) from None
    elif last_event_id is not None:
        resume = Cursor(last_event_id)
    return await live_stream(
        state.fanout,
        store,
        engine.log,
        run_id,
        resume=resume,
        from_start=from_start,
        filter=filter,
        heartbeat=heartbeat,
    )
