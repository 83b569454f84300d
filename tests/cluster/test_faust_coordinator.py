"""The faust-hosted coordinator: two processes share aob.runs; one is killed with -9.

Every run must still complete, and every node must have run exactly once, counted at
the worker's side-effect sink (a SQLite file), not in any coordinator's memory.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aob.events.codec import decode, encode
from aob.events.ids import new_event_id
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append
from aob.events.partitioner import partition_for
from aob.events.types import (
    RUNS_TOPIC,
    TERMINAL_RUN_EVENTS,
    Event,
    RunCompleted,
    RunSubmitted,
    task_topic,
)
from tests.cluster.conftest import Processes, kill_hard
from tests.cluster.sink_worker import NODE_TYPE, executions

pytestmark = pytest.mark.slow

COORDINATOR = "aob.projections.runtime.faust_coordinator"
PARTITIONS = 4
RUNS = 30
SUBMIT_GAP = 0.1  # seconds between two submissions
ENDED_BEFORE_KILL = 3
NODE_DELAY = "0.1"  # seconds each sink node takes

# a -> (b, c, d) -> e: a fan-out and an AND-join, every node a side effect.
FANOUT_JOIN: dict[str, Any] = {
    "name": "cluster-fanout-join",
    "nodes": [{"id": n, "type": NODE_TYPE} for n in "abcde"],
    "edges": [
        {"from": "a", "to": "b"},
        {"from": "a", "to": "c"},
        {"from": "a", "to": "d"},
        {"from": "b", "to": "e"},
        {"from": "c", "to": "e"},
        {"from": "d", "to": "e"},
    ],
}


class RunsObserver:
    """Reads aob.runs from the start, keeping each run's terminal event."""

    def __init__(self, event_log: KafkaEventLog) -> None:
        self.log = event_log
        self.offsets = dict.fromkeys(range(PARTITIONS), 0)
        self.ended: dict[str, Event] = {}

    async def catch_up(self) -> None:
        for partition, offset in self.offsets.items():
            while records := await self.log.read(RUNS_TOPIC, partition, offset):
                for record in records:
                    self._see(decode(record.value))
                offset = records[-1].offset + 1
            self.offsets[partition] = offset

    def _see(self, event: Event) -> None:
        if isinstance(event.payload, TERMINAL_RUN_EVENTS):
            self.ended.setdefault(event.key, event)


async def eventually(
    check: Callable[[], Any], what: str, processes: Processes, timeout: float = 60.0
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout:.0f}s\n{processes.logs()}")


def owned(ready_file: Path) -> set[int] | None:
    """The aob.runs partitions a coordinator last reported owning (None before any)."""
    try:
        return set(json.loads(ready_file.read_text())["partitions"])
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def split_between(ready_files: list[Path]) -> bool:
    """Every coordinator owns some partitions, and together all of them, once each."""
    shares = [owned(f) for f in ready_files]
    if any(not share for share in shares):
        return False
    everything = [p for share in shares for p in share or ()]
    return sorted(everything) == list(range(PARTITIONS))


def start_worker(processes: Processes, bootstrap: str, sink: Path) -> None:
    args = ["--bootstrap", bootstrap, "--sink", str(sink), "--delay", NODE_DELAY]
    processes.start("worker", "-m", "tests.cluster.sink_worker", *args)


def start_coordinator(
    processes: Processes, bootstrap: str, ready_file: Path, index: int
) -> subprocess.Popen[bytes]:
    args = ["--bootstrap", bootstrap, "--ready-file", str(ready_file), "--loglevel", "info"]
    # The broker's shortest session: a killed process's partitions move after 6 s.
    args += ["--session-timeout", "6"]
    return processes.start(f"coordinator-{index}", "-m", COORDINATOR, "worker", *args)


async def submit(event_log: KafkaEventLog, index: int) -> str:
    run_id = f"run-{index:03d}-{new_event_id()[:8]}"
    payload = RunSubmitted(run_id, FANOUT_JOIN, {"i": index}, [NODE_TYPE])
    event = Event(new_event_id(), run_id, int(time.time() * 1000), payload, actor="test")
    await event_log.append([Append(RUNS_TOPIC, run_id, encode(event))])
    return run_id


async def test_a_coordinator_killed_mid_run_loses_nothing_and_repeats_nothing(
    cluster_bootstrap: str, processes: Processes, tmp_path: Path
) -> None:
    bootstrap = cluster_bootstrap
    async with await KafkaEventLog.open(bootstrap) as event_log:
        await event_log.create_topic(RUNS_TOPIC, PARTITIONS)
        await event_log.create_topic(task_topic(NODE_TYPE), 2)
        sink = tmp_path / "executions.db"
        start_worker(processes, bootstrap, sink)
        ready = [tmp_path / f"coordinator-{i}.json" for i in range(2)]
        coordinators = [start_coordinator(processes, bootstrap, f, i) for i, f in enumerate(ready)]
        await eventually(lambda: split_between(ready), "both coordinators owning", processes)

        observer = RunsObserver(event_log)
        run_ids: list[str] = []

        async def submit_all() -> None:
            for i in range(RUNS):  # a steady stream: runs in every phase at any moment
                run_ids.append(await submit(event_log, i))
                await asyncio.sleep(SUBMIT_GAP)

        async def some_runs_ended() -> bool:
            await observer.catch_up()
            return len(observer.ended) >= ENDED_BEFORE_KILL

        submitting = asyncio.create_task(submit_all())
        try:
            await eventually(some_runs_ended, "the first runs completing", processes)
            victim_partitions = owned(ready[0]) or set()
            kill_hard(coordinators[0])
            unfinished = [r for r in run_ids if r not in observer.ended]
            mid_run = [r for r in unfinished if partition_for(r, PARTITIONS) in victim_partitions]
            assert mid_run, "the killed coordinator had no run in flight: the test proves nothing"
            await submitting
        finally:
            submitting.cancel()

        async def every_run_ended() -> bool:
            await observer.catch_up()
            return all(r in observer.ended for r in run_ids)

        await eventually(every_run_ended, "every run ending", processes, timeout=90)

    outcomes = {r: type(observer.ended[r].payload).__name__ for r in run_ids}
    assert set(outcomes.values()) == {RunCompleted.__name__}, outcomes
    assert owned(ready[1]) == set(range(PARTITIONS))  # the survivor took over
    executed = Counter(executions(sink))
    expected = {(r, n, 0, 1) for r in run_ids for n in "abcde"}
    assert set(executed) == expected
    twice = {task: count for task, count in executed.items() if count > 1}
    assert not twice, f"executed more than once: {twice}"
