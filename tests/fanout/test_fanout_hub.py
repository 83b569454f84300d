"""The fanout hub in process, over the real embedded log and read models: slow
subscribers, read models lagging the log, duplicates in the log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from aob.events.codec import encode
from aob.events.log.port import Append
from aob.events.log.sqlite import SqliteEventLog
from aob.events.types import (
    RUNS_TOPIC,
    Event,
    NodeCompleted,
    NodeScheduled,
    Payload,
    RunCompleted,
    RunSubmitted,
)
from aob.platform.engine import Engine
from aob.platform.fanout import (
    _IDLE_SKIP_S,
    Batch,
    FanoutHub,
    RunEvent,
    StreamBroken,
    StreamEnd,
    StreamFilter,
    StreamItem,
    sse_name,
)
from aob.platform.settings import Settings
from aob.projections.readmodels.sqlite import SqliteReadModels
from tests.fanout.live import SLOW, submitted, until


async def collect(batches: AsyncIterator[list[StreamItem]]) -> list[StreamItem]:
    return [item async for batch in batches for item in batch]


def offsets(items: list[StreamItem]) -> list[int]:
    return [i.offset for i in items if isinstance(i, RunEvent)]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = await Engine.open(Settings(data_dir=tmp_path, node_types=["ext"]))
    await engine.start()
    yield engine
    await engine.stop()


async def test_a_slow_subscriber_is_dropped_and_catches_up_on_reconnect(engine: Engine) -> None:
    hub = FanoutHub(engine.log, engine.read_models, queue_limit=12)
    await hub.start()
    try:
        run_id = await submitted(engine, SLOW)
        slow = hub.stream(run_id, after=-1)
        first = await anext(slow)  # subscribed, the history read; then it stops reading
        everything = await collect(hub.stream(run_id, after=-1))
        rest = await collect(slow)
    finally:
        await hub.stop()

    assert isinstance(everything[-1], StreamEnd)
    assert everything[-1].status == "failed"
    assert all(isinstance(item, RunEvent) for item in first)
    broken = rest[-1]
    assert isinstance(broken, StreamBroken)
    assert broken.reason == "overflow"
    assert hub.dropped == 1
    got = offsets(first) + offsets(rest)
    assert got == offsets(everything)[: len(got)]  # what it got before the drop is right
    assert broken.last_event_id == got[-1]

    await hub.start()
    try:
        resumed = await collect(hub.stream(run_id, after=broken.last_event_id))
    finally:
        await hub.stop()
    assert got + offsets(resumed) == offsets(everything)


def _event(run_id: str, event_id: str, payload: Payload) -> Event:
    return Event(event_id, run_id, 1_700_000_000_000, payload, "trace", None, "test")


async def test_history_comes_from_the_log_where_the_read_models_lag(tmp_path: Path) -> None:
    log = await SqliteEventLog.open(tmp_path / "log.db")
    await log.create_topic(RUNS_TOPIC, 1)  # one partition: both runs interleave in it
    read_models = SqliteReadModels.open(tmp_path / "rm.db")
    definition = {"name": "w", "nodes": [{"id": "a", "type": "noop"}]}
    mine, other = "run_mine", "run_other"
    events = [
        _event(mine, "e1", RunSubmitted(mine, definition, {}, ["noop"])),
        _event(other, "o1", RunSubmitted(other, definition, {}, ["noop"])),
        _event(mine, "e2", NodeScheduled(mine, "a", "noop", 0, 1, {}, {})),
        _event(mine, "e3", NodeCompleted(mine, "a", 0, 1, 42)),
        _event(mine, "e3", NodeCompleted(mine, "a", 0, 1, 42)),  # a producer retry
        _event(mine, "e4", RunCompleted(mine, {"a": 42})),
    ]
    records = await log.append([Append(RUNS_TOPIC, e.key, encode(e)) for e in events])
    # The projector has applied the first three records only.
    read_models.apply([(r, e) for r, e in zip(records[:3], events[:3], strict=True)])
    hub = FanoutHub(log, read_models)
    await hub.start()
    try:
        items = await collect(hub.stream(mine, after=-1))
        after_scheduled = await collect(hub.stream(mine, after=2))
        seen_all = await collect(hub.stream(mine, after=5))
        errors_only = await collect(
            hub.stream(mine, after=-1, filter=StreamFilter(errors_only=True))
        )
    finally:
        await hub.stop()
        read_models.close()
        await log.close()

    assert offsets(items) == [0, 2, 3, 5]  # not the other run's, not the duplicate
    assert [i.name for i in items if isinstance(i, RunEvent)] == [
        "workflow_started",
        "node_scheduled",
        "node_completed",
        "workflow_completed",
    ]
    assert items[-1] == StreamEnd(mine, "completed", 5)
    assert offsets(after_scheduled) == [3, 5]
    assert seen_all == [StreamEnd(mine, "completed", 5)]
    assert errors_only == [StreamEnd(mine, "completed", 5)]


async def records_in(engine: Engine) -> int:
    """Records in `aob.runs` (the test's engine holds one run only)."""
    return sum((await engine.log.end_offsets(RUNS_TOPIC)).values())


# The SLOW run appends ~60 records over ~2.5 s: a subscriber joins every few of them.
JOIN_EVERY = 8


async def test_live_events_follow_history_without_gap_while_appends_race(engine: Engine) -> None:
    hub = FanoutHub(engine.log, engine.read_models)
    await hub.start()
    try:
        run_id = await submitted(engine, SLOW)
        # Subscribers join at staggered points of the run's history, while it is written.
        streams = []
        for k in range(6):
            await until(partial(_at_least, engine, 1 + k * JOIN_EVERY), "records appended")
            streams.append(asyncio.create_task(collect(hub.stream(run_id, after=-1))))
        results = await asyncio.gather(*streams)
    finally:
        await hub.stop()
    end = results[0][-1]
    assert isinstance(end, StreamEnd)
    last = end.last_event_id
    assert last is not None
    # The streams read the log; the timeline is the projector's: wait for it to catch up.
    timeline = await until(partial(_timeline_through, engine, run_id, last), "the timeline")
    expected = [row["offset"] for row in timeline]
    for items in results:
        assert offsets(items) == expected


async def _at_least(engine: Engine, records: int) -> bool | None:
    return await records_in(engine) >= records


async def _timeline_through(
    engine: Engine, run_id: str, offset: int
) -> list[dict[str, Any]] | None:
    """The run's timeline once the projector has applied the record at `offset` (else [])."""
    timeline = await engine.read_models.timeline(run_id, limit=10_000)
    return timeline if timeline and timeline[-1]["offset"] >= offset else None


def test_wire_names() -> None:
    assert sse_name("ApprovalRequested") == "approval_required"
    assert sse_name("RunFailed") == "workflow_failed"
    assert sse_name("PatchApplied") == "patch_applied"
    assert sse_name("SomethingNew") == "something_new"


class Client:
    """A stream's client as `EventStreamResponse` drives it: the bytes it got, in order.
    While `gate` is set, every write waits for it (a client that stopped reading: its
    socket buffer is full)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.gate: asyncio.Future[None] | None = None
        self.by_stream = False  # a write of what the stream yielded (else: the dispatch's)
        self.direct_writes = 0

    async def write(self, data: bytes) -> None:
        self.direct_writes += not self.by_stream
        if self.gate is not None:
            await self.gate
        self.data += data

    async def serve(self, batches: AsyncIterator[Batch], *, stall: bool = False) -> None:
        """Write what the stream yields; with `stall`, stop reading after the first."""
        async for batch in batches:
            self.by_stream = True
            await self.write(batch.sse)
            self.by_stream = False
            if stall and self.gate is None:
                self.gate = asyncio.get_running_loop().create_future()

    def frames(self) -> list[tuple[int | None, str, dict[str, Any]]]:
        """(id, event, data) of each frame the client got."""
        out = []
        for frame in bytes(self.data).split(b"\r\n\r\n"):
            fields = dict(
                line.split(": ", 1) for line in frame.decode().split("\r\n") if ": " in line
            )
            if "data" in fields:
                ident = int(fields["id"]) if "id" in fields else None
                out.append((ident, fields.get("event", ""), json.loads(fields["data"])))
        return out

    def ids(self) -> list[int]:
        return [ident for ident, _, _ in self.frames() if ident is not None]


async def test_the_dispatch_writes_to_clients_and_a_stalled_one_holds_up_no_other(
    engine: Engine,
) -> None:
    hub = FanoutHub(engine.log, engine.read_models, queue_limit=12)
    await hub.start()
    try:
        run_id = await submitted(engine, SLOW)
        fast, stalled = Client(), Client()
        stalled_task = asyncio.create_task(
            stalled.serve(hub.stream(run_id, after=-1, direct=stalled.write), stall=True)
        )
        # The stalled client's socket stays full until the other has had the whole run.
        await asyncio.wait_for(fast.serve(hub.stream(run_id, after=-1, direct=fast.write)), 60)
        assert not stalled_task.done()
        assert stalled.gate is not None
        stalled.gate.set_result(None)
        await stalled_task
        everything = offsets(await collect(hub.stream(run_id, after=-1)))
    finally:
        await hub.stop()

    # Every event once, in order, then the end; live ones written by the dispatch.
    assert fast.ids() == everything
    assert fast.frames()[-1][1] == "end"
    assert fast.direct_writes > 0
    # The stalled one was dropped: a prefix of the events, then `reconnect`.
    assert hub.dropped == 1
    got = stalled.ids()
    assert got == everything[: len(got)]
    _, event, notice = stalled.frames()[-1]
    assert (event, notice["reason"], notice["last_event_id"]) == ("reconnect", "overflow", got[-1])


class CountingLog:
    """The embedded log, counting `end_offsets` (a request to the broker on Kafka)."""

    def __init__(self, inner: SqliteEventLog) -> None:
        self.inner = inner
        self.end_offset_calls = 0

    async def end_offsets(self, topic: str) -> dict[int, int]:
        self.end_offset_calls += 1
        return await self.inner.end_offsets(topic)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_hub_nobody_listens_to_asks_for_the_ends_by_time_not_at_every_append(
    tmp_path: Path,
) -> None:
    log = await SqliteEventLog.open(tmp_path / "log.db")
    await log.create_topic(RUNS_TOPIC, 2)
    read_models = SqliteReadModels.open(tmp_path / "rm.db")
    counting = CountingLog(log)
    hub = FanoutHub(counting, read_models)
    loop = asyncio.get_running_loop()
    await hub.start()
    try:
        began = loop.time()
        definition = {"name": "w", "nodes": [{"id": "a", "type": "noop"}]}
        for n in range(200):  # each append wakes the tail
            run_id = f"run_{n}"
            event = _event(run_id, f"e{n}", RunSubmitted(run_id, definition, {}, ["noop"]))
            await log.append([Append(RUNS_TOPIC, run_id, encode(event))])
            await asyncio.sleep(0)
        # A subscriber of a run appended while nobody listened still gets all of it.
        mine = "run_mine"
        events = [
            _event(mine, "m1", RunSubmitted(mine, definition, {}, ["noop"])),
            _event(mine, "m2", RunCompleted(mine, {"a": 1})),
        ]
        await log.append([Append(RUNS_TOPIC, mine, encode(e)) for e in events])
        items = await collect(hub.stream(mine, after=-1))
        elapsed = loop.time() - began
    finally:
        await hub.stop()
        read_models.close()
        await log.close()
    assert [i.name for i in items if isinstance(i, RunEvent)] == [
        "workflow_started",
        "workflow_completed",
    ]
    # start() and the stream's subscription once each, else at most once a second.
    assert counting.end_offset_calls <= 3 + elapsed / _IDLE_SKIP_S


async def test_the_runs_feed_resumes_only_from_an_id_it_numbered() -> None:
    """`epoch:seq` with seq in ASCII digits: '²' passed str.isdigit() and int() then
    raised mid-stream (an API audit); any id the feed cannot answer for is no resume."""
    from aob.platform.fanout import RunChangeFeed

    feed = RunChangeFeed(history=None)  # type: ignore[arg-type]  # never read here
    assert feed._resume(f"{feed.epoch}:0") == 0
    for foreign in (f"{feed.epoch}:\u00b2", f"{feed.epoch}:-1", f"{feed.epoch}:", "x:0", ""):
        assert feed._resume(foreign) is None, foreign
