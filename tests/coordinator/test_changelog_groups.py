"""Several coordinators share the runs by partition (consumer group `aob-coordinator`).

Against the embedded log and real Kafka: two hosts split the partitions of `aob.runs`
and end every run once; a host that leaves hands its runs over, timers included (the
new owner fires them); a host paused past its timeouts is fenced and writes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aob.events.codec import decode, encode
from aob.events.ids import new_event_id
from aob.events.log.port import Append, EventLog, Record
from aob.events.types import (
    RUNS_TOPIC,
    TERMINAL_RUN_EVENTS,
    Event,
    NodeScheduled,
    RunFailed,
    RunSubmitted,
    TimerFired,
    TimerSet,
)
from aob.projections.runtime.coordinator import CoordinatorHost
from aob.projections.runtime.timers import TimerService
from tests.coordinator.test_changelog_restore import (
    PARTITIONS,
    complete,
    opened_log,
    runs_log,
    submit,
)

SETTLE = 90.0  # seconds a rebalance and the folds after it may take on a busy machine
TIMEOUT_MS = 5_000
TIMEOUT: dict[str, Any] = {
    "name": "times-out",
    "nodes": [{"id": "a", "type": "work", "timeout_ms": TIMEOUT_MS}],
    "edges": [],
}
EVERY = frozenset(range(PARTITIONS))


class Running:
    """Coordinator hosts running their loops, each stopped (leaving the group) at the end."""

    def __init__(self, event_log: EventLog) -> None:
        self.log = event_log
        self.hosts: list[tuple[CoordinatorHost, asyncio.Event, asyncio.Task[None]]] = []

    async def start(self, **options: float) -> CoordinatorHost:
        host = CoordinatorHost(self.log, **options)  # type: ignore[arg-type]
        await host.recover()
        stop = asyncio.Event()
        self.hosts.append((host, stop, asyncio.create_task(host.run(stop))))
        return host

    async def stop(self, host: CoordinatorHost) -> None:
        for known, stop, task in self.hosts:
            if known is host:
                stop.set()
                await task

    async def stop_all(self) -> None:
        for _, stop, _ in self.hosts:
            stop.set()
        await asyncio.gather(*(task for *_, task in self.hosts), return_exceptions=True)


@pytest.fixture(params=["embedded", "kafka"])
async def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    async with opened_log(request, tmp_path) as log:
        yield log


@pytest.fixture
async def running(event_log: EventLog) -> AsyncIterator[Running]:
    hosts = Running(event_log)
    try:
        yield hosts
    finally:
        await hosts.stop_all()


async def until(condition: Callable[[], Any]) -> None:
    """Wait until `condition()` (sync or async) holds, checking every 50 ms."""
    async with asyncio.timeout(SETTLE):
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)


def split(*hosts: CoordinatorHost) -> bool:
    """Disjoint shares covering every partition, none empty."""
    shares = [h.owned for h in hosts]
    return (
        all(shares) and sum(map(len, shares)) == PARTITIONS and frozenset().union(*shares) == EVERY
    )


async def events_of(event_log: EventLog, runs: list[str]) -> list[Event]:
    wanted = set(runs)
    return [e for e in await runs_log(event_log) if e.key in wanted]


async def all_ended(event_log: EventLog, runs: list[str]) -> bool:
    ended = {
        e.key
        for e in await events_of(event_log, runs)
        if isinstance(e.payload, TERMINAL_RUN_EVENTS)
    }
    return ended == set(runs)


async def scheduled(event_log: EventLog, runs: list[str], node_id: str) -> bool:
    events = await events_of(event_log, runs)
    done = {
        e.key
        for e in events
        if isinstance(e.payload, NodeScheduled) and e.payload.node_id == node_id
    }
    return done == set(runs)


async def assert_each_ended_once(event_log: EventLog, runs: list[str]) -> list[Event]:
    events = await runs_log(event_log)
    ids = Counter(e.event_id for e in events)
    assert [i for i, n in ids.items() if n > 1] == []  # no event appended twice
    ends = Counter(e.key for e in events if isinstance(e.payload, TERMINAL_RUN_EVENTS))
    assert ends == dict.fromkeys(runs, 1)
    return events


class LogTimers:
    """The timer read model, derived from the log: timers set and not fired yet."""

    def __init__(self, event_log: EventLog) -> None:
        self.log = event_log

    async def due_timers(self, now_ms: int, limit: int) -> list[dict[str, Any]]:
        pending: dict[str, dict[str, Any]] = {}
        for event in await runs_log(self.log):
            payload = event.payload
            if isinstance(payload, TimerSet) and payload.fire_at <= now_ms:
                pending[payload.timer_id] = {"timer_id": payload.timer_id, "run_id": payload.run_id}
            elif isinstance(payload, TimerFired):
                pending.pop(payload.timer_id, None)
        return list(pending.values())[:limit]

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        return None


def timers_of(host: CoordinatorHost, clock: list[int]) -> TimerService:
    return TimerService(
        host.log,
        LogTimers(host.log),
        clock=lambda: clock[0],
        owns=host.owns,
        append=host.append_owned,
    )


async def submit_timing_out(event_log: EventLog, count: int) -> list[str]:
    runs = [str(uuid.uuid4()) for _ in range(count)]
    events = [
        Event(new_event_id(), r, 1, RunSubmitted(r, TIMEOUT, {}, ["work"]), actor="t") for r in runs
    ]
    await event_log.append([Append(RUNS_TOPIC, e.key, encode(e)) for e in events])
    return runs


async def test_two_coordinators_share_the_runs_and_end_each_once(
    event_log: EventLog, running: Running
) -> None:
    first = await running.start()
    second = await running.start()
    await until(lambda: split(first, second))
    runs = await submit(event_log, 40)
    await until(lambda: scheduled(event_log, runs, "a"))
    await complete(event_log, runs, "a")
    await until(lambda: scheduled(event_log, runs, "b"))
    await complete(event_log, runs, "b")
    await until(lambda: all_ended(event_log, runs))
    await assert_each_ended_once(event_log, runs)
    assert split(first, second)  # both took part throughout
    assert first.fenced == second.fenced == 0


async def test_a_leaving_coordinator_hands_its_runs_and_timers_over(
    event_log: EventLog, running: Running
) -> None:
    clock = [0]  # nothing is due until the test says so
    first = await running.start()
    second = await running.start()
    await until(lambda: split(first, second))
    chains = await submit(event_log, 20)
    waiting = await submit_timing_out(event_log, 12)
    await until(lambda: scheduled(event_log, chains + waiting, "a"))
    await complete(event_log, chains, "a")
    leaving = [r for r in waiting if first.owns(r)]
    assert leaving, "the first host owns some runs waiting on a timeout"

    # While the first host owns them, the second fires none of their timers.
    clock[0] = 1 + TIMEOUT_MS
    assert await timers_of(second, clock).fire_due() == len(waiting) - len(leaving)
    await running.stop(first)  # leaves the group: the second takes everything over
    await until(lambda: second.owned == EVERY)
    assert await timers_of(second, clock).fire_due() == len(leaving)
    await until(lambda: scheduled(event_log, chains, "b"))
    await complete(event_log, chains, "b")
    await until(lambda: all_ended(event_log, chains + waiting))

    events = await assert_each_ended_once(event_log, chains + waiting)
    failed = {e.key for e in events if isinstance(e.payload, RunFailed)}
    assert failed == set(waiting)  # ended by their timeouts, fired by the new owner
    assert second.states == {}


async def test_a_paused_coordinator_is_fenced_and_writes_nothing(
    event_log: EventLog, running: Running
) -> None:
    paused = CoordinatorHost(event_log, session_timeout=1.0, poll_timeout=2.0)
    await paused.recover()
    runs = await submit(event_log, 16)
    records: list[Record] = []
    await until(lambda: read_into(paused, records, len(runs)))

    # The host folds the batch, then stops (a long GC pause, a stopped process) before
    # its commit: past its timeouts the group gives its partitions to the other host.
    taken_over = asyncio.Event()
    commit = paused.consumer.commit

    async def commit_after_the_pause(*args: Any, **kwargs: Any) -> list[Record]:
        await taken_over.wait()
        return await commit(*args, **kwargs)

    paused.consumer.commit = commit_after_the_pause  # type: ignore[method-assign]
    folded = asyncio.create_task(paused.step(records))
    other = await running.start()
    await until(lambda: other.owned == EVERY)
    await until(lambda: scheduled(event_log, runs, "a"))

    taken_over.set()  # back: what it folded meanwhile is refused, and let go
    await folded
    assert paused.fenced == 1
    assert paused.owned == frozenset()
    assert paused.states == {}

    events = await events_of(event_log, runs)
    ids = Counter(e.event_id for e in events)
    assert [i for i, n in ids.items() if n > 1] == []
    scheduled_a = Counter(e.key for e in events if isinstance(e.payload, NodeScheduled))
    assert scheduled_a == dict.fromkeys(runs, 1)
    await paused.close()


async def read_into(host: CoordinatorHost, records: list[Record], count: int) -> bool:
    records += await host.consumer.poll(timeout=0.2)
    return len({decode(r.value).key for r in records}) >= count
