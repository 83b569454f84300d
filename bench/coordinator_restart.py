"""Coordinator restart time after 1,000 and after 50,000 finished runs.

    python -m bench.coordinator_restart                      # embedded log
    python -m bench.coordinator_restart --bootstrap HOST:PORT   # and on Kafka
    python -m bench.coordinator_restart --sizes 1000 --repeat 3

The history is written straight to the log, as a live coordinator leaves it: each run
(a two-node chain) is its submission, the fold's decisions and the workers' answers
on `aob.runs` (the fold makes them), and in the changelog two states and a tombstone,
with a position marker per partition after every 100 runs; the group's offsets are
committed at the end. Then, per repetition, a new `CoordinatorHost` restores
(`recover`); timed: that call. Reported per log and size, medians:

- `changelog`: the restore as it is on that log. On the embedded log the host compacts
  the changelog every 10,000 records it writes, so it is measured both as written
  (`uncompacted`, the most a restart reads there) and compacted. On Kafka the broker's
  cleaner compacts closed segments (rolled every 10 minutes): a fresh history is
  measured uncompacted, the worst case.
- `refold`: the old restart, folding `aob.runs` from offset 0 (a changelog without
  marker: what an upgraded deployment does once), for the ratio (3 repetitions, 1
  above 10,000 runs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from aob.events.codec import encode
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append, EventLog, TopicPartition
from aob.events.log.prefixed import PrefixedEventLog
from aob.events.log.sqlite import SqliteEventLog
from aob.events.types import (
    DEADLETTER_TOPIC,
    EXPRESSIONS_TOPIC,
    RUNS_TOPIC,
    Event,
    NodeCompleted,
    NodeScheduled,
    Payload,
    RunSubmitted,
    task_topic,
)
from aob.projections.coordinator.fold import fold
from aob.projections.coordinator.state import RunState
from aob.projections.runtime.changelog import (
    CHANGELOG_TOPIC,
    RunRecord,
    compact_changelog,
    create_changelog,
    position_entry,
    run_entries,
    tombstones,
)
from aob.projections.runtime.coordinator import GROUP, CoordinatorHost

PARTITIONS = 8
CHUNK = 100  # runs per batch of history
CHAIN: dict[str, Any] = {
    "name": "chain",
    "nodes": [{"id": "a", "type": "work"}, {"id": "b", "type": "work"}],
    "edges": [{"from": "a", "to": "b"}],
}


@dataclass
class Figure:
    log: str
    runs: int
    mode: str
    seconds: float
    changelog_records: int
    refolded_records: int


async def prepare(event_log: EventLog) -> None:
    for topic in (RUNS_TOPIC, task_topic("work"), EXPRESSIONS_TOPIC, DEADLETTER_TOPIC):
        await event_log.create_topic(topic, PARTITIONS)
    await create_changelog(event_log, PARTITIONS)


def run_history(number: int) -> tuple[list[Append], list[RunState]]:
    """One finished run's records on aob.runs and tasks, and its states between."""
    run_id = f"run-{number}-{uuid.uuid4().hex[:8]}"
    appends: list[Append] = []
    states: list[RunState] = []
    state: RunState | None = None
    causes: list[Payload] = [
        RunSubmitted(run_id, CHAIN, {"n": number}, ["work"]),
        NodeCompleted(run_id, "a", 0, 1, {"a": number}),
        NodeCompleted(run_id, "b", 0, 1, {"b": number}),
    ]
    for step, payload in enumerate(causes):
        cause = Event(f"{run_id}:{step}", run_id, 1_000 + step, payload, actor="bench")
        state, emitted = fold(state, cause)
        for event in [cause, *emitted]:
            data = encode(event)
            appends.append(Append(RUNS_TOPIC, run_id, data))
            if isinstance(event.payload, NodeScheduled):
                appends.append(Append(task_topic("work"), run_id, data))
        if state is not None and not state.is_finished:
            states.append(state)
    return appends, states


async def write_history(event_log: EventLog, runs: int) -> None:
    for first in range(0, runs, CHUNK):
        appends: list[Append] = []
        changelog: list[Append] = []
        for number in range(first, min(first + CHUNK, runs)):
            records, states = run_history(number)
            appends += records
            # The states a host stores between batches (snapshot of the state as it was).
            stored = RunRecord()
            changelog += run_entries(states[0], stored, PARTITIONS)
            changelog += tombstones(states[0].run_id, stored)
        written = await event_log.append(appends)
        ends: dict[int, int] = {}
        for record in written:
            if record.topic == RUNS_TOPIC:
                ends[record.partition] = record.offset + 1
        markers = [position_entry(p, PARTITIONS, end) for p, end in sorted(ends.items())]
        await event_log.append(changelog + markers)
    ends = await event_log.end_offsets(RUNS_TOPIC)
    await event_log.commit(GROUP, {TopicPartition(RUNS_TOPIC, p): e for p, e in ends.items()})


async def timed_restart(event_log: EventLog) -> tuple[float, int, int]:
    host = CoordinatorHost(event_log)
    started = time.perf_counter()
    await host.recover()
    seconds = time.perf_counter() - started
    assert not host.states, "every run of the history has finished"
    return seconds, host.restored_records, host.refolded_records


async def measure(name: str, event_log: EventLog, runs: int, repeat: int) -> list[Figure]:
    await prepare(event_log)
    await write_history(event_log, runs)
    figures = [await restarts(name, event_log, runs, repeat, "changelog, uncompacted")]
    if name == "embedded":
        await compact_changelog(event_log)
        figures.append(await restarts(name, event_log, runs, repeat, "changelog, compacted"))
    return figures


async def restarts(name: str, event_log: EventLog, runs: int, repeat: int, mode: str) -> Figure:
    samples = [await timed_restart(event_log) for _ in range(repeat)]
    return Figure(
        name,
        runs,
        mode,
        statistics.median(s[0] for s in samples),
        samples[0][1],
        samples[0][2],
    )


async def measure_refold(name: str, event_log: EventLog, runs: int, repeat: int) -> Figure:
    """The old restart: the same history with a changelog without marker, folded from 0."""
    seconds: list[float] = []
    refolded = 0
    for _ in range(repeat):
        # Each repetition on fresh changelog topic names: the refold persists states.
        fresh = PrefixedEventLog(event_log, f"r{uuid.uuid4().hex[:6]}.")
        await fresh.create_topic(CHANGELOG_TOPIC, PARTITIONS)
        host = CoordinatorHost(cast(EventLog, _OwnChangelog(event_log, fresh)))
        started = time.perf_counter()
        await host.recover()
        seconds.append(time.perf_counter() - started)
        refolded = host.refolded_records
    return Figure(name, runs, "refold from offset 0", statistics.median(seconds), 0, refolded)


class _OwnChangelog:
    """`base`, but the changelog topic lives in `changelog` (empty: no marker)."""

    def __init__(self, base: EventLog, changelog: EventLog) -> None:
        self.base, self.changelog = base, changelog

    def _for(self, topic: str) -> EventLog:
        return self.changelog if topic == CHANGELOG_TOPIC else self.base

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    async def partitions(self, topic: str) -> int:
        return await self._for(topic).partitions(topic)

    async def read(self, topic: str, partition: int, offset: int, max_records: int = 500) -> Any:
        return await self._for(topic).read(topic, partition, offset, max_records)

    async def append_and_commit(self, records: Sequence[Append], group: str, offsets: Any) -> Any:
        await self.changelog.append([r for r in records if r.topic == CHANGELOG_TOPIC])
        rest = [r for r in records if r.topic != CHANGELOG_TOPIC]
        return await self.base.append_and_commit(rest, group, offsets)


def refold_repeat(runs: int) -> int:
    """The baseline takes seconds per repetition on a long history: fewer of them."""
    return 1 if runs > 10_000 else 3


async def embedded(runs: int, repeat: int, directory: Path) -> list[Figure]:
    figures = []
    async with await SqliteEventLog.open(directory / f"history-{runs}.db") as event_log:
        figures += await measure("embedded", event_log, runs, repeat)
        figures.append(await measure_refold("embedded", event_log, runs, refold_repeat(runs)))
    return figures


async def kafka(bootstrap: str, runs: int, repeat: int) -> list[Figure]:
    async with await KafkaEventLog.open(bootstrap) as inner:
        event_log = PrefixedEventLog(inner, f"bench-restart-{uuid.uuid4().hex[:8]}.")
        figures = await measure("kafka", event_log, runs, repeat)
        figures.append(await measure_refold("kafka", event_log, runs, refold_repeat(runs)))
    return figures


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.coordinator_restart")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 50_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--bootstrap", help="a Kafka broker to measure on as well")
    args = parser.parse_args(argv)
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as directory:
        for runs in args.sizes:
            figures += await embedded(runs, args.repeat, Path(directory))
            if args.bootstrap:
                figures += await kafka(args.bootstrap, runs, args.repeat)
    print(f"{'log':9} {'finished runs':>13}  {'restart':22} {'median ms':>9} {'read':>8}")
    for f in figures:
        read = f.changelog_records + f.refolded_records
        print(f"{f.log:9} {f.runs:13,}  {f.mode:22} {f.seconds * 1000:9.2f} {read:8,}")
    for log_name in sorted({f.log for f in figures}):
        for runs in args.sizes:
            mine = [f for f in figures if (f.log, f.runs) == (log_name, runs)]
            old = next(f.seconds for f in mine if f.mode.startswith("refold"))
            now = min(f.seconds for f in mine if f.mode.startswith("changelog"))
            print(f"{log_name} {runs:,}: refold / changelog restart = {old / now:.0f}x")


if __name__ == "__main__":
    asyncio.run(main())
