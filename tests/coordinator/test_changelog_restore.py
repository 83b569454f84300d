"""The coordinator restores run states from its changelog, not from history.

Against the embedded log and real Kafka: a restarted host reads the changelog, folds
no record of `aob.runs` again, holds no finished run, and carries runs in flight
across restarts to exactly one ending.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aob.events.codec import decode, encode
from aob.events.ids import new_event_id
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append, EventLog
from aob.events.log.prefixed import PrefixedEventLog
from aob.events.log.sqlite import SqliteEventLog
from aob.events.partitioner import partition_for
from aob.events.types import (
    DEADLETTER_TOPIC,
    EXPRESSIONS_TOPIC,
    RUNS_TOPIC,
    Event,
    NodeCompleted,
    NodeScheduled,
    NodeStarted,
    Payload,
    RunCompleted,
    RunSubmitted,
    TimerFired,
    task_topic,
)
from aob.projections.runtime.changelog import (
    CHANGELOG_TOPIC,
    compact_changelog,
    create_changelog,
)
from aob.projections.runtime.coordinator import CHANGELOG_INTERVAL, CoordinatorHost
from aob.projections.runtime.timers import TimerService

PARTITIONS = 4
CHAIN: dict[str, Any] = {
    "name": "chain",
    "nodes": [{"id": "a", "type": "work"}, {"id": "b", "type": "work"}],
    "edges": [{"from": "a", "to": "b"}],
}


@pytest.fixture(params=["embedded", "kafka"])
async def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    async with opened_log(request, tmp_path) as log:
        yield log


@contextlib.asynccontextmanager
async def opened_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    """The embedded log, or Kafka under a prefix of its own, with the coordinator's topics."""
    inner: SqliteEventLog | KafkaEventLog
    if request.param == "embedded":
        inner = await SqliteEventLog.open(tmp_path / "log.db")
        log: EventLog = inner
    else:
        inner = await KafkaEventLog.open(request.getfixturevalue("kafka_bootstrap"))
        log = PrefixedEventLog(inner, f"restore-{uuid.uuid4().hex[:8]}.")
    for topic in (RUNS_TOPIC, task_topic("work"), EXPRESSIONS_TOPIC, DEADLETTER_TOPIC):
        await log.create_topic(topic, PARTITIONS)
    await create_changelog(log, PARTITIONS)
    try:
        yield log
    finally:
        await inner.close()


async def started(
    event_log: EventLog,
    instead_of: CoordinatorHost | None = None,
    changelog_interval: float = CHANGELOG_INTERVAL,
) -> CoordinatorHost:
    """A coordinator that joins the group (`instead_of` leaves it first: a restart)."""
    if instead_of is not None:
        await instead_of.close()
    host = CoordinatorHost(event_log, changelog_interval=changelog_interval)
    await host.recover()
    return host


async def drain(host: CoordinatorHost) -> None:
    """Fold until every owned partition is read to its end (own appends included)."""
    while not await read_to_the_end(host):
        records = await host.consumer.poll(timeout=1.0)
        if records:
            await host.step(records)


async def read_to_the_end(host: CoordinatorHost) -> bool:
    """Whether no record follows the host's positions (on Kafka, end offsets count
    transaction markers too: only a read says whether a record follows)."""
    for tp, position in host.consumer.positions.items():
        if await host.log.read(tp.topic, tp.partition, position, 1):
            return False
    return True


async def append(event_log: EventLog, run_id: str, payload: Payload) -> None:
    event = Event(new_event_id(), run_id, 1, payload, actor="test")
    await event_log.append([Append(RUNS_TOPIC, run_id, encode(event))])


async def submit(event_log: EventLog, count: int) -> list[str]:
    runs = [str(uuid.uuid4()) for _ in range(count)]
    events = [
        Event(new_event_id(), r, 1, RunSubmitted(r, CHAIN, {}, ["work"]), actor="test")
        for r in runs
    ]
    await event_log.append([Append(RUNS_TOPIC, e.key, encode(e)) for e in events])
    return runs


async def complete(event_log: EventLog, runs: list[str], node_id: str) -> None:
    events = [
        Event(new_event_id(), r, 1, NodeCompleted(r, node_id, 0, 1, {"n": node_id}), actor="w")
        for r in runs
    ]
    await event_log.append([Append(RUNS_TOPIC, e.key, encode(e)) for e in events])


async def runs_log(event_log: EventLog) -> list[Event]:
    events = []
    for partition in range(PARTITIONS):
        offset = 0
        while records := await event_log.read(RUNS_TOPIC, partition, offset, 1000):
            events += [decode(r.value) for r in records]
            offset = records[-1].offset + 1
    return events


async def changelog_size(event_log: EventLog) -> int:
    total = 0
    for partition in range(PARTITIONS):
        offset = 0
        while records := await event_log.read(CHANGELOG_TOPIC, partition, offset, 1000):
            total += len(records)
            offset = records[-1].offset + 1
    return total


async def finish_runs(event_log: EventLog, host: CoordinatorHost, count: int) -> list[str]:
    """`count` runs of CHAIN, each across several batches, all completed."""
    runs = await submit(event_log, count)
    await drain(host)
    await complete(event_log, runs, "a")
    await drain(host)
    await complete(event_log, runs, "b")
    await drain(host)
    return runs


async def test_finished_runs_leave_memory_and_a_restart_reads_no_history(
    event_log: EventLog,
) -> None:
    host = await started(event_log, changelog_interval=0)  # the changelog after every batch
    runs = await finish_runs(event_log, host, 60)
    assert len(host.states) == 0
    ended = Counter(e.key for e in await runs_log(event_log) if isinstance(e.payload, RunCompleted))
    assert ended == dict.fromkeys(runs, 1)

    again = await started(event_log, instead_of=host)
    assert again.refolded_records == 0  # not one record of aob.runs read again
    assert len(again.states) == 0
    # The changelog before compaction: per run, its core after each of its 3 batches,
    # its submission, the output of `a`, a tombstone for each of those 3 keys; and the
    # markers. Nothing else was read.
    assert again.restored_records == await changelog_size(event_log)
    markers = again.restored_records - 7 * len(runs)
    assert 0 < markers <= 12 * PARTITIONS


async def test_an_embedded_changelog_compacts_to_the_live_runs(tmp_path: Path) -> None:
    async with await SqliteEventLog.open(tmp_path / "log.db") as event_log:
        for topic in (RUNS_TOPIC, task_topic("work"), EXPRESSIONS_TOPIC, DEADLETTER_TOPIC):
            await event_log.create_topic(topic, PARTITIONS)
        await create_changelog(event_log, PARTITIONS)
        host = await started(event_log, changelog_interval=0)  # records to compact
        await finish_runs(event_log, host, 200)
        live = await submit(event_log, 5)
        await drain(host)
        before = await changelog_size(event_log)
        assert await compact_changelog(event_log) > 0
        # Per partition its latest marker (and its last record, kept so that end
        # offsets never move back), plus per live run its core and its submission.
        assert await changelog_size(event_log) <= 2 * PARTITIONS + 2 * len(live) < before

        again = await started(event_log, instead_of=host)
        assert sorted(again.states) == sorted(live)
        assert again.restored_records <= 2 * PARTITIONS + 2 * len(live)
        assert again.refolded_records == 0


async def test_runs_in_flight_across_restarts_end_exactly_once(event_log: EventLog) -> None:
    first = await started(event_log)
    runs = await submit(event_log, 12)
    await drain(first)
    assert sorted(first.states) == sorted(runs)

    await complete(event_log, runs, "a")
    second = await started(event_log, instead_of=first)
    assert sorted(second.states) == sorted(runs)
    assert second.refolded_records == 0
    await drain(second)

    await complete(event_log, runs, "b")
    third = await started(event_log, instead_of=second)
    await drain(third)
    assert third.states == {}

    events = await runs_log(event_log)
    ended = Counter(e.key for e in events if isinstance(e.payload, RunCompleted))
    assert ended == dict.fromkeys(runs, 1)
    scheduled = Counter(
        (e.key, e.payload.node_id) for e in events if isinstance(e.payload, NodeScheduled)
    )
    assert scheduled == {(r, n): 1 for r in runs for n in ("a", "b")}


async def test_a_crash_between_changelog_writes_folds_the_rest_again_exactly_once(
    tmp_path: Path,
) -> None:
    """Between two changelog writes, a killed host's states are only in the log: the
    next host restores the older states and folds the rest again, and every run still
    schedules each node once and ends once."""
    path = tmp_path / "log.db"
    event_log = await SqliteEventLog.open(path)
    for topic in (RUNS_TOPIC, task_topic("work"), EXPRESSIONS_TOPIC, DEADLETTER_TOPIC):
        await event_log.create_topic(topic, PARTITIONS)
    await create_changelog(event_log, PARTITIONS)
    host = await started(event_log, changelog_interval=0)
    written = await submit(event_log, 6)  # in the changelog before the crash
    await drain(host)
    host.changelog_interval = 3600.0  # nothing more reaches it
    runs = await submit(event_log, 6)
    await drain(host)
    await complete(event_log, written + runs, "a")
    await drain(host)
    # A batch that emits nothing commits nothing: folded again after the crash.
    for run in written + runs:
        await append(event_log, run, NodeStarted(run, "b", 0, 1, "w"))
    await drain(host)
    size = await changelog_size(event_log)
    await event_log.close()  # the host dies with it, never closed: kill -9

    async with await SqliteEventLog.open(path) as event_log:
        assert await changelog_size(event_log) == size
        again = await started(event_log)
        assert again.refolded_records > 0
        assert sorted(again.states) == sorted(written + runs)
        await drain(again)
        await complete(event_log, written + runs, "b")
        await drain(again)
        assert again.states == {}
        events = await runs_log(event_log)
        ended = Counter(e.key for e in events if isinstance(e.payload, RunCompleted))
        assert ended == dict.fromkeys(written + runs, 1)
        scheduled = Counter(
            (e.key, e.payload.node_id) for e in events if isinstance(e.payload, NodeScheduled)
        )
        assert scheduled == {(r, n): 1 for r in written + runs for n in ("a", "b")}


async def test_a_batch_commits_the_offsets_of_the_partitions_it_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Kafka each partition of a commit is a transaction of its own: a batch of one
    run's events commits its partition, not every partition the host owns."""
    committed: list[set[int]] = []
    fenced_commit = SqliteEventLog.fenced_commit

    async def recorded(
        self: SqliteEventLog, records: Any, group: str, offsets: Any, owner: Any, done: Any = None
    ) -> Any:
        committed.append({tp.partition for tp in offsets})
        return await fenced_commit(self, records, group, offsets, owner, done)

    monkeypatch.setattr(SqliteEventLog, "fenced_commit", recorded)
    async with await SqliteEventLog.open(tmp_path / "log.db") as event_log:
        for topic in (RUNS_TOPIC, task_topic("work"), EXPRESSIONS_TOPIC, DEADLETTER_TOPIC):
            await event_log.create_topic(topic, PARTITIONS)
        await create_changelog(event_log, PARTITIONS)
        host = await started(event_log, changelog_interval=0)
        assert committed == [set(range(PARTITIONS))]  # joining: every partition once
        (run,) = await submit(event_log, 1)
        await drain(host)
        await complete(event_log, [run], "a")
        await drain(host)
        assert len(committed) > 1
        assert all(c == {partition_for(run, PARTITIONS)} for c in committed[1:])


async def changelog_reaches(event_log: SqliteEventLog, size: int) -> None:
    """Until the changelog holds `size` records (woken by each append to it)."""
    while True:
        appended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        unwatch = event_log.watch([CHANGELOG_TOPIC], appended)
        try:
            if await changelog_size(event_log) >= size:
                return
            await appended
        finally:
            unwatch()


async def test_an_idle_host_writes_its_changelog_once_the_interval_has_passed(
    tmp_path: Path,
) -> None:
    """Nothing more to read: the states folded since the last write still reach the
    changelog after `changelog_interval`, and the host then waits, not spins."""
    async with await SqliteEventLog.open(tmp_path / "log.db") as event_log:
        for topic in (RUNS_TOPIC, task_topic("work"), EXPRESSIONS_TOPIC, DEADLETTER_TOPIC):
            await event_log.create_topic(topic, PARTITIONS)
        await create_changelog(event_log, PARTITIONS)
        host = CoordinatorHost(event_log, changelog_interval=0.05)
        await host.recover()
        stop = asyncio.Event()
        running = asyncio.create_task(host.run(stop))
        try:
            runs = await submit(event_log, 3)
            async with asyncio.timeout(10):
                await changelog_reaches(event_log, 2 * len(runs))  # cores, submissions
            polls = 0
            poll = host.consumer.poll

            async def counted(timeout: float = 1.0) -> list[Any]:
                nonlocal polls
                polls += 1
                return await poll(timeout)

            host.consumer.poll = counted  # type: ignore[method-assign]
            await asyncio.sleep(0.3)
            assert polls <= 2  # idle: one poll of 0.5 s, not a poll per loop turn
        finally:
            stop.set()
            await running


async def test_late_events_of_a_finished_run_change_nothing_after_a_restart(
    event_log: EventLog,
) -> None:
    host = await started(event_log)
    (run,) = await finish_runs(event_log, host, 1)
    again = await started(event_log, instead_of=host)
    end = await event_log.end_offsets(RUNS_TOPIC)
    # A worker's late answer, and a timer that fired after the run ended.
    await complete(event_log, [run], "b")
    await append(event_log, run, TimerFired(run, f"{run}:a:0:1:timeout"))
    await drain(again)
    partition = partition_for(run, PARTITIONS)
    assert (await event_log.end_offsets(RUNS_TOPIC))[partition] == end[partition] + 2
    assert again.states == {}


class _Timers:
    """A timer read model holding one due timer per run."""

    def __init__(self, runs: list[str]) -> None:
        self.runs = runs

    async def due_timers(self, now_ms: int, limit: int) -> list[dict[str, Any]]:
        return [{"timer_id": f"{r}:a:0:1:retry", "run_id": r} for r in self.runs]

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        return None


async def test_only_the_owner_of_a_runs_partition_fires_its_timers(tmp_path: Path) -> None:
    async with await SqliteEventLog.open(tmp_path / "log.db") as event_log:
        for topic in (RUNS_TOPIC, task_topic("work"), EXPRESSIONS_TOPIC, DEADLETTER_TOPIC):
            await event_log.create_topic(topic, PARTITIONS)
        await create_changelog(event_log, PARTITIONS)
        host = await started(event_log)
        runs = [str(uuid.uuid4()) for _ in range(40)]
        kept = {tp for tp in host.consumer.positions if tp.partition in (0, 1)}
        host.release(frozenset(host.consumer.positions) - kept)
        assert host.owned == {0, 1}
        timers = TimerService(event_log, _Timers(runs), owns=host.owns)
        fired = await timers.fire_due()
        owned = [r for r in runs if partition_for(r, PARTITIONS) in (0, 1)]
        assert fired == len(owned) > 0
        fired_for = {e.key for e in await runs_log(event_log)}
        assert fired_for == set(owned)
