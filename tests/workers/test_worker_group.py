"""Worker hosts of one node type share its task topic: every task runs once, also
while hosts join and leave (real embedded log, real hosts, no mocks)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from aob.events.codec import decode, encode
from aob.events.ids import new_event_id
from aob.events.log.port import Append, EventLog, Record, TopicPartition
from aob.events.log.sqlite import SqliteEventLog
from aob.events.types import RUNS_TOPIC, Event, NodeCompleted, NodeScheduled, task_topic
from aob.workers.host import NodeType, WorkerHost

KIND = "grouptest"
PARTITIONS = 4


@pytest.fixture
async def event_log(tmp_path: Path) -> AsyncIterator[EventLog]:
    log = await SqliteEventLog.open(tmp_path / "events.db")
    await log.create_topic(task_topic(KIND), PARTITIONS)
    await log.create_topic(RUNS_TOPIC, PARTITIONS)
    try:
        yield log
    finally:
        await log.close()


def task(run_id: str, key: str | None = None) -> Append:
    """A task of `run_id`, keyed (so partitioned) by the run unless `key` says."""
    payload = NodeScheduled(run_id, "n", KIND, 0, 1, {}, {})
    event = Event(new_event_id(), key or run_id, 0, payload)
    return Append(task_topic(KIND), key or run_id, encode(event))


class Hosts:
    """Worker hosts on one log, counting which ran each task."""

    def __init__(self, event_log: EventLog) -> None:
        self.log = event_log
        self.executed: Counter[str] = Counter()
        self.by_host: Counter[str] = Counter()
        self.running: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}

    async def start(self, name: str) -> WorkerHost:
        async def handler(scheduled: NodeScheduled) -> str:
            self.executed[scheduled.run_id] += 1
            self.by_host[name] += 1
            await asyncio.sleep(0)  # let the other hosts interleave
            return name

        host = WorkerHost(self.log, NodeType(KIND, handler, announce_start=False), worker_id=name)
        await host.start()
        stop = asyncio.Event()
        self.running[name] = (stop, asyncio.create_task(host.run(stop)))
        return host

    async def stop(self, name: str) -> None:
        stop, task = self.running.pop(name)
        stop.set()
        await task

    async def stop_all(self) -> None:
        for name in list(self.running):
            await self.stop(name)


async def completed(event_log: EventLog) -> Counter[str]:
    """NodeCompleted events on aob.runs, per run."""
    counts: Counter[str] = Counter()
    for partition in range(PARTITIONS):
        offset = 0
        while batch := await event_log.read(RUNS_TOPIC, partition, offset):
            offset = batch[-1].offset + 1
            counts.update(_run_of_completion(record) for record in batch)
    counts.pop("", None)
    return counts


def _run_of_completion(record: Record) -> str:
    payload = decode(record.value).payload
    return payload.run_id if isinstance(payload, NodeCompleted) else ""


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - state of several hosts, no one event
            await asyncio.sleep(0.02)


async def test_two_worker_hosts_run_each_task_once(event_log: EventLog) -> None:
    hosts = Hosts(event_log)
    try:
        first = await hosts.start("a")
        second = await hosts.start("b")
        await until(lambda: bool(first.consumer.assignment) and bool(second.consumer.assignment))
        assert not first.consumer.assignment & second.consumer.assignment

        runs = [f"run-{i}" for i in range(60)]
        await event_log.append([task(run) for run in runs[:30]])
        await until(lambda: len(hosts.executed) >= 15)
        await hosts.stop("b")  # leaves mid-load: its partitions move to a
        await event_log.append([task(run) for run in runs[30:]])
        await until(lambda: len(hosts.executed) == 60)
        await until(lambda: len(first.consumer.assignment) == PARTITIONS)
        outcomes: Counter[str] = Counter()

        async def all_recorded() -> bool:
            nonlocal outcomes
            outcomes = await completed(event_log)
            return len(outcomes) == 60

        async with asyncio.timeout(30):
            while not await all_recorded():
                await event_log.wait_for_append(0.5)
    finally:
        await hosts.stop_all()
    assert set(hosts.executed) == set(runs)
    assert max(hosts.executed.values()) == 1, hosts.executed.most_common(3)
    assert max(outcomes.values()) == 1
    assert hosts.by_host["a"]
    assert hosts.by_host["b"]


async def test_a_task_abandoned_in_a_rebalance_runs_again_when_it_comes_back(
    event_log: EventLog,
) -> None:
    """A task cancelled mid-execution (its partition went in a rebalance past the settle
    timeout) is not remembered as executed: when the partition comes back to the same
    host, as eager rebalancing often does, the task runs. A task that did run is still
    taken once (its record delivered again is skipped)."""
    calls: list[str] = []
    first_started = asyncio.Event()

    async def handler(scheduled: NodeScheduled) -> str:
        calls.append(scheduled.run_id)
        if len(calls) == 1:
            first_started.set()
            await asyncio.Event().wait()  # until abandoned
        return "ran"

    host = WorkerHost(event_log, NodeType(KIND, handler, announce_start=False))
    await event_log.append([task("run-abandoned")])
    record = await _only_task_record(event_log)

    abandoned = asyncio.create_task(host._execute(record))
    await first_started.wait()
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned

    again = await host._execute(record)  # the partition came back: delivered again
    assert calls == ["run-abandoned", "run-abandoned"]
    assert [decode(a.value).type for a in again.appends] == ["NodeStarted", "NodeCompleted"]

    duplicate = await host._execute(record)
    assert duplicate.appends == []
    assert len(calls) == 2


async def test_tasks_finished_past_a_running_one_are_not_run_again_by_the_next_owner(
    event_log: EventLog,
) -> None:
    """One partition: a slow task, then quick ones that finish while it runs. The host
    stops with the slow one unfinished, so its committed offset stays there; the next
    host runs the slow task, and not the quick ones whose outcomes are in the log."""
    calls: list[tuple[str, str]] = []
    slow_started = asyncio.Event()

    def handler_of(name: str) -> Callable[[NodeScheduled], Awaitable[str]]:
        async def handler(scheduled: NodeScheduled) -> str:
            calls.append((name, scheduled.run_id))
            if scheduled.run_id == "slow" and name == "first":
                slow_started.set()
                await asyncio.Event().wait()  # until the host stops
            return name

        return handler

    runs = ["slow", "quick-1", "quick-2", "quick-3"]
    await event_log.append([task(run, key="one-partition") for run in runs])

    async def run_host(name: str, finished: Callable[[Counter[str]], bool]) -> None:
        host = WorkerHost(event_log, NodeType(KIND, handler_of(name), announce_start=False))
        await host.start()
        stop = asyncio.Event()
        running = asyncio.create_task(host.run(stop))
        try:
            async with asyncio.timeout(30):
                while not finished(await completed(event_log)):
                    await event_log.wait_for_append(0.5)
        finally:
            stop.set()
            await running

    await run_host("first", lambda done: slow_started.is_set() and len(done) == 3)
    await run_host("second", lambda done: "slow" in done)
    assert sorted(calls) == sorted([("first", run) for run in runs] + [("second", "slow")])
    assert await completed(event_log) == Counter(runs)


class HeldCommits:
    """An event log whose members hold each commit with appends until `release`, and
    note the order in which commits reach the log."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.held = asyncio.Event()
        self.landed: list[str] = []

    async def join(self, *args: Any, **kwargs: Any) -> Any:
        member = await self.inner.join(*args, **kwargs)
        log = self

        class Held:
            async def commit(
                self,
                appends: Mapping[TopicPartition, Sequence[Append]],
                offsets: Mapping[TopicPartition, int],
                done: Mapping[TopicPartition, Sequence[range]] | None = None,
            ) -> list[Record]:
                kind = "outcomes" if any(appends.values()) else "offsets"
                if kind == "outcomes":
                    log.held.set()
                    await log.release.wait()
                committed = await member.commit(appends, offsets, done)
                log.landed.append(kind)
                return committed

            def __getattr__(self, name: str) -> Any:
                return getattr(member, name)

        return Held()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_revocation_commits_after_the_flush_under_way(event_log: EventLog) -> None:
    """What a revocation commits says which tasks are done: it waits for the flush that
    carries their outcomes, which could still fail (and then they are not done)."""
    held = HeldCommits(event_log)

    async def handler(scheduled: NodeScheduled) -> str:
        return "ran"

    host = WorkerHost(held, NodeType(KIND, handler, announce_start=False))
    await host.start()
    stop = asyncio.Event()
    running = asyncio.create_task(host.run(stop))
    try:
        await event_log.append([task("run-1")])
        async with asyncio.timeout(30):
            await held.held.wait()  # its outcome is being committed
        revoking = asyncio.create_task(host.on_revoked(host.consumer.assignment))
        held.release.set()
        await revoking
        assert held.landed[:2] == ["outcomes", "offsets"]
    finally:
        held.release.set()
        stop.set()
        await running


async def _only_task_record(event_log: EventLog) -> Record:
    records = [
        record
        for partition in range(PARTITIONS)
        for record in await event_log.read(task_topic(KIND), partition, 0)
    ]
    assert len(records) == 1
    return records[0]
