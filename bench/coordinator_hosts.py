"""Coordinator hosts on Kafka: the faust-streaming host against the plain aiokafka host.

    python -m bench.coordinator_hosts            # 3 repetitions, a few minutes
    python -m bench.coordinator_hosts --quick    # 1 repetition, smaller sizes
    python -m bench.coordinator_hosts --json

Both hosts fold with the same pure function; what differs is the host: the plain
one (`aob.projections.runtime.coordinator.CoordinatorHost` on `KafkaEventLog`, run
states in memory, rebuilt from the log at start) and the faust one
(`aob.projections.runtime.faust_coordinator`, states in a changelog-backed table).
Per repetition, each host gets a fresh single-node broker (the topic names are
fixed, so hosts cannot share one), runs in its own process, and is measured on:

(a) end to end: a `transform` worker process (`WorkerHost`) executes the nodes of a
    5-node fan-out/join DAG (bench.core's shape). After a warm-up, runs one at a time give
    the latency (submit -> the run's 17th event on `aob.runs`); then a burst of runs
    submitted at once gives workflows/s and events/s on `aob.runs`.
(b) replay: the worker is stopped, and a simulated stream of whole runs (their
    submissions and worker answers, interleaved as on a live log, 100 runs at a
    time) is appended at once. The host folds it and appends its decisions; done
    when every decision is on `aob.runs`. Events/s counts every record of those
    runs on `aob.runs` (17 per run, as in (a)): the host alone, no worker to wait for.

Also reported: the host process's CPU time per workflow in (a) and per 1,000 events
in (b), read from /proc (steadier than wall time when other processes compete).
Figures are medians over repetitions; ratios (faust / plain) are taken per
repetition, then their median is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aob.events.codec import decode, encode
from aob.events.ids import derived_event_id, new_event_id
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append
from aob.events.types import (
    RUNS_TOPIC,
    TERMINAL_RUN_EVENTS,
    Event,
    NodeCompleted,
    NodeScheduled,
    NodeStarted,
    RunCompleted,
    RunSubmitted,
    task_topic,
)
from aob.infra.kafka import KafkaBroker
from aob.projections.coordinator.fold import fold
from aob.projections.coordinator.state import RunState
from aob.projections.runtime.coordinator import CoordinatorHost
from aob.projections.workflow.expressions import evaluate
from aob.workers.builtin import BUILTIN_TYPES
from aob.workers.host import WorkerHost

HOSTS = ("plain", "faust")
# a -> (b, c, d) -> e: one fan-out, one AND-join, five transform nodes (as bench.core).
FANOUT_JOIN: dict[str, Any] = {
    "name": "bench-hosts-fanout-join",
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expr": ".inputs.x + 1"}},
        {"id": "b", "type": "transform", "config": {"expr": ".nodes.a * 2"}},
        {"id": "c", "type": "transform", "config": {"expr": ".nodes.a * 3"}},
        {"id": "d", "type": "transform", "config": {"expr": ".nodes.a * 4"}},
        {"id": "e", "type": "transform", "config": {"expr": ".nodes.b + .nodes.c + .nodes.d"}},
    ],
    "edges": [{"from": "a", "to": t} for t in "bcd"] + [{"from": s, "to": "e"} for s in "bcd"],
}
KNOWN_TYPES = ["transform"]
PARTITIONS = 4
EVENTS_PER_RUN = 17  # submitted, 5 x (scheduled, started, completed), completed
READY_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Sizes:
    warmup_runs: int = 20
    sequential_runs: int = 20
    burst_runs: int = 400
    replay_runs: int = 1000
    reps: int = 3


QUICK = Sizes(warmup_runs=5, sequential_runs=5, burst_runs=100, replay_runs=200, reps=1)


@dataclass(frozen=True)
class Sample:
    """One host's figures in one repetition."""

    host: str
    rep: int
    latency_p50_ms: float
    burst_workflows_per_s: float
    burst_events_per_s: float
    burst_cpu_ms_per_workflow: float
    replay_events_per_s: float
    replay_cpu_ms_per_1k_events: float


# --- the replayed stream ----------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """What the world appends to aob.runs for some runs (submissions, worker answers),
    in an order a live log could have; `decisions` is how many events the coordinator
    appends while folding it."""

    events: list[Event]
    decisions: int


def simulate(runs: int, in_flight: int = 100) -> Stream:
    """`runs` runs of FANOUT_JOIN, `in_flight` at a time: the fold decides, a worker
    answers each `NodeScheduled` with `NodeStarted` and `NodeCompleted`."""
    pending: deque[Event] = deque()
    events: list[Event] = []
    states: dict[str, RunState] = {}
    decisions = submitted = 0

    def submit() -> None:
        nonlocal submitted
        run_id = f"replay-{submitted:06d}"
        payload = RunSubmitted(run_id, FANOUT_JOIN, {"x": submitted}, KNOWN_TYPES)
        pending.append(Event(new_event_id(), run_id, 0, payload, actor="bench"))
        submitted += 1

    for _ in range(min(in_flight, runs)):
        submit()
    while pending:
        event = pending.popleft()
        events.append(event)
        state, emitted = fold(states.get(event.key), event)
        if state is not None:
            states[event.key] = state
        decisions += len(emitted)
        for out in emitted:
            if isinstance(out.payload, NodeScheduled):
                pending.extend(_answers(out, out.payload))
            elif isinstance(out.payload, TERMINAL_RUN_EVENTS) and submitted < runs:
                submit()
    return Stream(events, decisions)


def _answers(task_event: Event, task: NodeScheduled) -> list[Event]:
    instance = (task.run_id, task.node_id, task.iteration, task.attempt)
    output = evaluate(task.config["expr"], task.input)
    started, completed = NodeStarted(*instance, "bench"), NodeCompleted(*instance, output)
    return [
        Event(derived_event_id(task_event.event_id, kind), task.run_id, 0, payload, actor="bench")
        for kind, payload in (("started", started), ("outcome", completed))
    ]


# --- child processes ---------------------------------------------------------------


class Children:
    """Processes of one measurement, logging to files in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT
            )
        self.started.append((process, log))
        return process

    @staticmethod
    def stop(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for process, _ in self.started:
            self.stop(process)

    def tails(self) -> str:
        lines = []
        for process, log in self.started:
            lines.append(f"--- {log.name} (pid {process.pid}, rc {process.poll()})")
            lines.extend(log.read_text(errors="replace").splitlines()[-15:])
        return "\n".join(lines)


def host_command(host: str, bootstrap: str, ready_file: Path) -> list[str]:
    if host == "plain":
        return ["-m", "bench.coordinator_hosts", "plain-host", bootstrap, str(ready_file)]
    return [
        "-m", "aob.projections.runtime.faust_coordinator", "worker",
        "--bootstrap", bootstrap, "--ready-file", str(ready_file),
    ]  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- measuring -----------------------------------------------------------------------


class Bench:
    """One host, one broker: submits runs and watches aob.runs grow."""

    def __init__(self, event_log: KafkaEventLog, host_pid: int) -> None:
        self.log = event_log
        self.host_pid = host_pid

    async def total(self) -> int:
        return sum((await self.log.end_offsets(RUNS_TOPIC)).values())

    async def wait_for_total(self, target: int, what: str) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while await self.total() < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: aob.runs did not reach {target} records")
            await asyncio.sleep(0.01)

    async def submit(self, count: int) -> None:
        records = []
        for _ in range(count):
            run_id = f"run-{new_event_id()}"
            payload = RunSubmitted(run_id, FANOUT_JOIN, {"x": 1}, KNOWN_TYPES)
            event = Event(new_event_id(), run_id, int(time.time() * 1000), payload, actor="bench")
            records.append(Append(RUNS_TOPIC, run_id, encode(event)))
        await self.log.append(records)

    async def runs(self, count: int, what: str) -> tuple[float, float]:
        """Submit `count` runs at once and wait for all their events: wall and host CPU s."""
        target = await self.total() + count * EVENTS_PER_RUN
        cpu, began = cpu_seconds(self.host_pid), time.perf_counter()
        await self.submit(count)
        await self.wait_for_total(target, what)
        return time.perf_counter() - began, cpu_seconds(self.host_pid) - cpu

    async def latency_ms(self, runs: int) -> float:
        samples = [(await self.runs(1, "one run"))[0] * 1000 for _ in range(runs)]
        return statistics.median(samples)

    async def replay(self, stream: Stream) -> tuple[float, float]:
        """Append `stream` at once; wait until the host has appended every decision it
        leads to. Wall and host CPU seconds."""
        records = [Append(RUNS_TOPIC, e.key, encode(e)) for e in stream.events]
        target = await self.total() + len(records) + stream.decisions
        cpu, began = cpu_seconds(self.host_pid), time.perf_counter()
        await self.log.append(records)
        await self.wait_for_total(target, "replay")
        return time.perf_counter() - began, cpu_seconds(self.host_pid) - cpu

    async def completed_runs(self) -> int:
        """Runs completed on aob.runs (read after timing: checks the work was done)."""
        done: set[str] = set()
        for partition in range(PARTITIONS):
            offset = 0
            while records := await self.log.read(RUNS_TOPIC, partition, offset, 2000):
                done.update(
                    r.key for r in records if isinstance(decode(r.value).payload, RunCompleted)
                )
                offset = records[-1].offset + 1
        return len(done)


async def wait_ready(ready_file: Path, host: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not await asyncio.to_thread(ready_file.exists):
        if host.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the coordinator host did not get ready")
        await asyncio.sleep(0.05)


async def measure(
    host: str, rep: int, sizes: Sizes, stream: Stream, bootstrap: str, tmp: Path
) -> Sample:
    children = Children(tmp)
    try:
        async with await KafkaEventLog.open(bootstrap) as event_log:
            await event_log.create_topic(RUNS_TOPIC, PARTITIONS)
            await event_log.create_topic(task_topic("transform"), PARTITIONS)
            worker = children.start(
                "worker", "-m", "bench.coordinator_hosts", "transform-worker", bootstrap
            )
            ready = tmp / "ready.json"
            process = children.start(host, *host_command(host, bootstrap, ready))
            await wait_ready(ready, process)
            bench = Bench(event_log, process.pid)
            await bench.runs(sizes.warmup_runs, "warm-up")
            latency = await bench.latency_ms(sizes.sequential_runs)
            burst_s, burst_cpu = await bench.runs(sizes.burst_runs, "burst")
            children.stop(worker)
            replay_s, replay_cpu = await bench.replay(stream)
            expected = sizes.warmup_runs + sizes.sequential_runs + sizes.burst_runs
            done = await bench.completed_runs()
            if done != expected + sizes.replay_runs:
                raise RuntimeError(
                    f"{done} runs completed, expected {expected + sizes.replay_runs}"
                )
    except (RuntimeError, TimeoutError) as error:
        raise RuntimeError(f"{host}: {error}\n{children.tails()}") from error
    finally:
        children.stop_all()
    return Sample(
        host=host,
        rep=rep,
        latency_p50_ms=latency,
        burst_workflows_per_s=sizes.burst_runs / burst_s,
        burst_events_per_s=sizes.burst_runs * EVENTS_PER_RUN / burst_s,
        burst_cpu_ms_per_workflow=burst_cpu * 1000 / sizes.burst_runs,
        replay_events_per_s=(len(stream.events) + stream.decisions) / replay_s,
        replay_cpu_ms_per_1k_events=replay_cpu * 1e6 / (len(stream.events) + stream.decisions),
    )


def measure_on_fresh_broker(host: str, rep: int, sizes: Sizes, stream: Stream) -> Sample:
    with tempfile.TemporaryDirectory(prefix=f"aob-bench-{host}-") as directory:
        tmp = Path(directory)
        broker = KafkaBroker.start(tmp / "kafka", die_with_parent=True)
        try:
            return asyncio.run(measure(host, rep, sizes, stream, broker.bootstrap, tmp))
        finally:
            broker.stop()


# --- reporting -------------------------------------------------------------------------

FIGURES = (
    ("latency_p50_ms", "one run at a time, p50 ms", "{:.1f}"),
    ("burst_workflows_per_s", "burst workflows/s", "{:.1f}"),
    ("burst_events_per_s", "burst events/s", "{:.0f}"),
    ("burst_cpu_ms_per_workflow", "burst host CPU ms/workflow", "{:.2f}"),
    ("replay_events_per_s", "replay events/s (host alone)", "{:.0f}"),
    ("replay_cpu_ms_per_1k_events", "replay host CPU ms/1k events", "{:.0f}"),
)


def summarize(samples: list[Sample]) -> dict[str, Any]:
    by_host = {h: [s for s in samples if s.host == h] for h in HOSTS}
    medians = {
        h: {key: statistics.median(getattr(s, key) for s in by_host[h]) for key, _, _ in FIGURES}
        for h in HOSTS
    }
    ratios = {
        key: statistics.median(
            getattr(f, key) / getattr(p, key)
            for p, f in zip(by_host["plain"], by_host["faust"], strict=True)
        )
        for key, _, _ in FIGURES
    }
    return {"medians": medians, "ratio_faust_to_plain": ratios}


def render(summary: dict[str, Any], sizes: Sizes) -> str:
    rows = [("figure", "plain aiokafka", "faust", "faust/plain")]
    for key, label, fmt in FIGURES:
        plain, faust = (summary["medians"][h][key] for h in HOSTS)
        ratio = summary["ratio_faust_to_plain"][key]
        rows.append((label, fmt.format(plain), fmt.format(faust), f"{ratio:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        f"Coordinator hosts on Kafka ({PARTITIONS} partitions of aob.runs, 5-node transform "
        f"DAG; burst {sizes.burst_runs} runs, replay {sizes.replay_runs} runs; median of "
        f"{sizes.reps} rep(s))",
    ]
    for row in rows:
        cells = [
            row[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


# --- child process entry points ------------------------------------------------------------


async def serve_plain_host(bootstrap: str, ready_file: Path) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with await KafkaEventLog.open(bootstrap) as event_log:
        host = CoordinatorHost(event_log)
        await host.recover()
        await asyncio.to_thread(ready_file.write_text, json.dumps({"pid": os.getpid()}))
        await host.run(stop)


async def serve_transform_worker(bootstrap: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    transform = next(t for t in BUILTIN_TYPES if t.name == "transform")
    async with await KafkaEventLog.open(bootstrap) as event_log:
        worker = WorkerHost(event_log, transform)
        await worker.start()
        await worker.run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repetition")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("role", nargs="*", help=argparse.SUPPRESS)  # child processes
    args = parser.parse_args(argv)
    match args.role:
        case ["plain-host", bootstrap, ready_file]:
            asyncio.run(serve_plain_host(bootstrap, Path(ready_file)))
            return 0
        case ["transform-worker", bootstrap]:
            asyncio.run(serve_transform_worker(bootstrap))
            return 0
        case []:
            pass
        case _:
            parser.error(f"unknown role {args.role}")
    sizes = QUICK if args.quick else Sizes()
    if args.reps is not None:
        sizes = Sizes(**{**asdict(sizes), "reps": max(1, args.reps)})
    stream = simulate(sizes.replay_runs)
    samples = []
    for rep in range(sizes.reps):
        for host in HOSTS:
            print(f"rep {rep + 1}/{sizes.reps}: {host} host ...", file=sys.stderr, flush=True)
            samples.append(measure_on_fresh_broker(host, rep, sizes, stream))
    summary = summarize(samples)
    if args.json:
        print(
            json.dumps(
                {**summary, "sizes": asdict(sizes), "samples": [asdict(s) for s in samples]},
                indent=2,
            )
        )
    else:
        print(render(summary, sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
