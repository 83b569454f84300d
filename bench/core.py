"""The core benchmark: the coordinator fold alone, then whole runs on the embedded default.

    python -m bench            # about a minute on 2 cores
    python -m bench --quick    # smaller sizes, about 15 s
    python -m bench --json     # machine-readable instead of the table
    python -m bench --profile e2e   # cProfile of one concurrent aob measurement
    python -m bench --profile low_load   # ... of aob's runs one at a time
    python -m bench --synchronous FULL   # both engines' SQLite fsyncs every commit
    python -m bench --default-gc   # CPython's GC settings instead of the server's

(a) Pure fold: a realistic `aob.runs` stream is built in advance by simulating
    runs of a 5-node fan-out/join DAG (workers answer each `NodeScheduled` with
    `NodeStarted` + `NodeCompleted`, and the coordinator's own emitted events come
    back through the log, as on the real log). Folding it is timed against two
    baselines over the same events: a dict-update fold and Avro decoding alone.
(b) End to end: an engine as `aob server dev` assembles it (SQLite log, read
    models, coordinator, projector, timers, built-in workers) runs the same DAG
    of `transform` nodes, submitted by tag. Latency is from `submit_run` to an
    observer reading the durable `RunCompleted` off `aob.runs`. Measured one run
    at a time (low load) and with many concurrent clients (throughput), each
    paired with LangGraph (+ AsyncSqliteSaver) and DBOS (durable steps on its SQLite
    system database) running the same DAG in this process when installed.
    With AOB_KAFKA_BOOTSTRAP and AOB_DATABASE_URL set, the same engine runs on
    Kafka + Postgres instead (fresh topics per repetition), e.g.
    python -m bench --only e2e --no-langgraph

Every figure is the median over repetitions; ratios are taken per repetition
against the baseline measured right beside it, then their median is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aob.events.codec import decode, encode
from aob.events.ids import derived_event_id, new_event_id
from aob.events.log.consumer import Consumer
from aob.events.log.port import EventLog, Record, TopicPartition
from aob.events.types import (
    RUNS_TOPIC,
    TERMINAL_RUN_EVENTS,
    Event,
    NodeCompleted,
    NodeScheduled,
    NodeStarted,
    Payload,
    RunCompleted,
    RunSubmitted,
)
from aob.platform.commands import Commands
from aob.platform.engine import Engine
from aob.platform.serve import tune_garbage_collection
from aob.platform.settings import Settings
from aob.projections.coordinator.fold import fold
from aob.projections.coordinator.state import RunState, RunStatus
from aob.projections.workflow.expressions import evaluate
from bench import dbos_baseline, langgraph_baseline

TAG = "bench-fanout"
RUN_TIMEOUT_S = 30.0  # a run this late is a bug, not a slow run

# a -> (b, c, d) -> e: one fan-out, one AND-join, five transform nodes.
FANOUT_JOIN: dict[str, Any] = {
    "name": "bench-fanout-join",
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expr": ".inputs.x + 1"}},
        {"id": "b", "type": "transform", "config": {"expr": ".nodes.a * 2"}},
        {"id": "c", "type": "transform", "config": {"expr": ".nodes.a * 3"}},
        {"id": "d", "type": "transform", "config": {"expr": ".nodes.a * 4"}},
        {"id": "e", "type": "transform", "config": {"expr": ".nodes.b + .nodes.c + .nodes.d"}},
    ],
    "edges": [
        {"from": "a", "to": "b"},
        {"from": "a", "to": "c"},
        {"from": "a", "to": "d"},
        {"from": "b", "to": "e"},
        {"from": "c", "to": "e"},
        {"from": "d", "to": "e"},
    ],
}
KNOWN_TYPES = ["agent", "hitl", "http", "noop", "transform"]

AIM_FOLD_EVENTS_PER_S = 50_000
# Issue 15's aims for the embedded default: concurrent >= 1,000 wf/s and >= 4x
# LangGraph; one at a time p50 <= 2 ms and below LangGraph's, in the same invocation.
AIM_WORKFLOWS_PER_S = 1000
AIM_VS_LANGGRAPH_WORKFLOWS_PER_S = 4.0
AIM_LOW_LOAD_P50_MS = 2.0
# The baselines run in the same invocation, paired rep by rep with aob.
BASELINES = ("langgraph", "dbos")


@dataclass(frozen=True)
class Sizes:
    fold_runs: int = 2000
    fold_reps: int = 5
    sequential_runs: int = 200
    concurrent_runs: int = 1000
    concurrency: int = 100
    reps: int = 3
    warmup_runs: int = 20


QUICK = Sizes(
    fold_runs=300,
    fold_reps=3,
    sequential_runs=30,
    concurrent_runs=200,
    concurrency=50,
    reps=3,
    warmup_runs=5,
)


# --- statistics -------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..1) of non-empty `samples`."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# --- (a) the pure fold ------------------------------------------------------------


def simulate_runs(runs: int, in_flight: int = 100) -> list[Event]:
    """The events of `runs` runs of FANOUT_JOIN that the coordinator folds, in log order.

    The log is a FIFO: the coordinator folds the next event; a worker answers each
    `NodeScheduled` it emits with `NodeStarted` and `NodeCompleted` (as the built-in
    transform worker does). The coordinator's own emitted events are left out: the
    fold applies them when it emits them, and the host skips them when they come
    back. `in_flight` runs are interleaved; a new one is submitted whenever one ends.
    """
    log: deque[Event] = deque()
    stream: list[Event] = []
    states: dict[str, RunState] = {}
    clock = iter(range(1_700_000_000_000, 1_800_000_000_000))
    submitted = 0

    def submit() -> None:
        nonlocal submitted
        run_id = f"run_{submitted:08d}"
        payload = RunSubmitted(run_id, FANOUT_JOIN, {"x": submitted}, KNOWN_TYPES, TAG, 1, TAG)
        log.append(Event(new_event_id(), run_id, next(clock), payload, "trace", None, "bench"))
        submitted += 1

    for _ in range(min(in_flight, runs)):
        submit()
    while log:
        event = log.popleft()
        stream.append(event)
        state, emitted = fold(states.get(event.key), event)
        if state is not None:
            states[event.key] = state
        for out in emitted:
            if isinstance(out.payload, NodeScheduled):
                log.extend(_worker_answer(out, out.payload, next(clock)))
            elif isinstance(out.payload, TERMINAL_RUN_EVENTS) and submitted < runs:
                submit()
    return stream


def _worker_answer(task_event: Event, task: NodeScheduled, at: int) -> list[Event]:
    output = evaluate(task.config["expr"], task.input)
    payloads: list[tuple[str, Payload]] = [
        ("started", NodeStarted(task.run_id, task.node_id, task.iteration, task.attempt, "bench")),
        ("outcome", NodeCompleted(task.run_id, task.node_id, task.iteration, task.attempt, output)),
    ]
    return [
        Event(
            derived_event_id(task_event.event_id, kind),
            task_event.key,
            at,
            payload,
            task_event.trace_id,
            task_event.event_id,
            "worker:bench",
        )
        for kind, payload in payloads
    ]


def fold_all(events: Sequence[Event]) -> int:
    """Fold `events` into fresh run states, as the coordinator host does; runs completed."""
    states: dict[str, RunState] = {}
    for event in events:
        state, _ = fold(states.get(event.key), event)
        if state is not None:
            states[event.key] = state
    return sum(state.status is RunStatus.COMPLETED for state in states.values())


def dict_update_all(events: Sequence[Event]) -> int:
    """Baseline: the cheapest useful fold, a per-run count of event types."""
    states: dict[str, dict[str, int]] = {}
    for event in events:
        counts = states.setdefault(event.key, {})
        kind = event.type
        counts[kind] = counts.get(kind, 0) + 1
    return len(states)


def decode_all(encoded: Sequence[bytes]) -> int:
    """Baseline: Avro-decode every record, do nothing with it."""
    for data in encoded:
        decode(data)
    return len(encoded)


def decode_and_fold_all(encoded: Sequence[bytes]) -> int:
    """What the coordinator host does per record: decode, then fold."""
    return fold_all([decode(data) for data in encoded])


@dataclass
class FoldResult:
    runs: int
    events: int
    reps: int
    events_per_s: dict[str, float]  # median per variant
    fold_vs_dict_update: float  # median per-rep ratio of fold to dict-update throughput
    fold_vs_decode: float  # median per-rep ratio of fold to decode-only throughput


def _timed(job: Callable[[], object]) -> float:
    gc.collect()
    started = time.perf_counter()
    job()
    return time.perf_counter() - started


def bench_fold(runs: int, reps: int) -> FoldResult:
    stream = simulate_runs(runs)
    encoded = [encode(event) for event in stream]
    if fold_all(stream) != runs:
        raise RuntimeError("the simulated stream does not complete every run")
    variants: dict[str, Callable[[], object]] = {
        "dict-update fold (baseline)": lambda: dict_update_all(stream),
        "decode only (baseline)": lambda: decode_all(encoded),
        "fold": lambda: fold_all(stream),
        "decode + fold": lambda: decode_and_fold_all(encoded),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):  # interleaved, so drift on a shared machine hits all alike
        for name, job in variants.items():
            rates[name].append(len(stream) / _timed(job))
    fold_rates = rates["fold"]
    return FoldResult(
        runs=runs,
        events=len(stream),
        reps=reps,
        events_per_s={name: median(values) for name, values in rates.items()},
        fold_vs_dict_update=median(
            f / b for f, b in zip(fold_rates, rates["dict-update fold (baseline)"], strict=True)
        ),
        fold_vs_decode=median(
            f / b for f, b in zip(fold_rates, rates["decode only (baseline)"], strict=True)
        ),
    )


# --- (b) end to end ----------------------------------------------------------------


class Runner(Protocol):
    async def run_one(self, x: int) -> float:
        """Run the DAG once on input `x`; seconds from submission to durable completion."""


class CompletionObserver:
    """Reads `aob.runs` and notes when each run's terminal event is in the log.

    Only records whose bytes mention a terminal event type are decoded (Avro
    strings are stored as UTF-8), so watching costs the engine little.
    """

    _MARKERS = tuple(cls.__name__.encode() for cls in TERMINAL_RUN_EVENTS)

    def __init__(self, event_log: EventLog) -> None:
        self._log = event_log
        self._consumer = Consumer(event_log, "bench-observer", [RUNS_TOPIC])
        self._finished: dict[str, tuple[float, Payload]] = {}
        self._waiting: dict[str, asyncio.Future[tuple[float, Payload]]] = {}

    async def start(self) -> None:
        ends = await self._log.end_offsets(RUNS_TOPIC)
        await self._consumer.start({TopicPartition(RUNS_TOPIC, p): end for p, end in ends.items()})

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for record in await self._consumer.poll(timeout=0.1):
                self._see(record)

    def _see(self, record: Record) -> None:
        value = record.value
        if not any(marker in value for marker in self._MARKERS):
            return
        payload = decode(value).payload
        if not isinstance(payload, TERMINAL_RUN_EVENTS):
            return
        outcome = (time.perf_counter(), payload)
        waiter = self._waiting.pop(record.key, None)
        if waiter is None:
            self._finished[record.key] = outcome
        elif not waiter.done():
            waiter.set_result(outcome)

    async def wait(self, run_id: str) -> tuple[float, Payload]:
        """When the run's terminal event was read (perf_counter time), and the event."""
        outcome = self._finished.pop(run_id, None)
        if outcome is not None:
            return outcome
        waiter: asyncio.Future[tuple[float, Payload]] = asyncio.get_running_loop().create_future()
        self._waiting[run_id] = waiter
        async with asyncio.timeout(RUN_TIMEOUT_S):
            return await waiter


class AobRunner:
    def __init__(self, commands: Commands, observer: CompletionObserver) -> None:
        self._commands = commands
        self._observer = observer

    async def run_one(self, x: int) -> float:
        started = time.perf_counter()
        accepted = await self._commands.submit_run(
            definition=None,
            tag=TAG,
            workflow_id=None,
            version=None,
            inputs={"x": x},
            actor="bench",
            trace_id="bench",
        )
        finished_at, outcome = await self._observer.wait(accepted["run_id"])
        expected = {"e": langgraph_baseline.expected_e(x)}
        if not isinstance(outcome, RunCompleted) or outcome.output != expected:
            raise RuntimeError(f"aob run {accepted['run_id']} ended with {outcome!r}")
        return finished_at - started


@asynccontextmanager
async def open_aob(data_dir: Path, *, synchronous: str) -> AsyncIterator[AobRunner]:
    """An embedded engine on `data_dir` with the DAG stored under TAG, and its observer."""
    settings = Settings(data_dir=data_dir, log_synchronous=synchronous)  # type: ignore[arg-type]
    if settings.kafka_bootstrap:  # cluster stores from the environment: fresh topics per rep
        settings = settings.model_copy(update={"topic_prefix": f"bench-{uuid.uuid4().hex[:8]}."})
    engine = await Engine.open(settings)
    await engine.start()
    stop = asyncio.Event()
    observer_task: asyncio.Task[None] | None = None
    try:
        commands = Commands(engine)
        await commands.create_workflow(FANOUT_JOIN, tag=TAG, actor="bench", trace_id="bench")
        observer = CompletionObserver(engine.log)
        await observer.start()
        observer_task = asyncio.create_task(observer.run(stop))
        yield AobRunner(commands, observer)
    finally:
        stop.set()
        if observer_task is not None:
            await observer_task
        await engine.stop()


Opener = Callable[[Path], contextlib.AbstractAsyncContextManager[Runner]]


@dataclass
class LoadResult:
    """One engine under one load: medians over repetitions."""

    runs: int
    concurrency: int
    reps: int
    workflows_per_s: float
    p50_ms: float
    p99_ms: float
    # CPU time of the whole process (every thread) per workflow: unlike wall time, it
    # barely moves when other processes compete for the cores.
    cpu_ms_per_workflow: float
    per_rep_workflows_per_s: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Sample:
    """One closed-loop measurement."""

    wall_s: float
    cpu_s: float
    latencies_s: list[float]

    @property
    def workflows_per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s

    @property
    def cpu_ms_per_workflow(self) -> float:
        return self.cpu_s * 1000 / len(self.latencies_s)

    @property
    def p50_s(self) -> float:
        return percentile(self.latencies_s, 0.5)


async def closed_loop(runner: Runner, runs: int, concurrency: int) -> Sample:
    """`concurrency` clients, each submitting its next run when the last completes."""
    latencies: list[float] = []
    claimed = 0

    async def client() -> None:
        nonlocal claimed
        while claimed < runs:
            claimed += 1
            latencies.append(await runner.run_one(claimed))

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return Sample(time.perf_counter() - started, time.process_time() - cpu_started, latencies)


async def measure(opener: Opener, runs: int, concurrency: int, warmup: int) -> Sample:
    """One repetition on a fresh engine: warm it up, then run the closed loop."""
    with tempfile.TemporaryDirectory(prefix="aob-bench-") as tmp:
        async with opener(Path(tmp)) as runner:
            await closed_loop(runner, warmup, min(concurrency, warmup))
            gc.collect()
            return await closed_loop(runner, runs, concurrency)


@dataclass
class E2EResult:
    engines: list[str]
    synchronous: str
    low_load: dict[str, LoadResult]
    concurrent: dict[str, LoadResult]
    # Per-rep ratios aob / LangGraph, medians (absent without LangGraph).
    ratios: dict[str, float]
    langgraph_error: str | None = None
    # The same against DBOS (absent without it).
    dbos_ratios: dict[str, float] = field(default_factory=dict)
    dbos_error: str | None = None


async def bench_e2e(
    sizes: Sizes, *, synchronous: str, with_langgraph: bool, with_dbos: bool = False
) -> E2EResult:
    openers: dict[str, Opener] = {"aob": lambda d: open_aob(d, synchronous=synchronous)}
    langgraph_error = dbos_error = None
    if with_langgraph:
        langgraph_error = _langgraph_unavailable()
        if langgraph_error is None:
            openers["langgraph"] = lambda d: langgraph_baseline.open_runner(
                d, synchronous=synchronous
            )
    if with_dbos:
        dbos_error = _dbos_unavailable()
        if dbos_error is None:
            openers["dbos"] = lambda d: dbos_baseline.open_runner(d, synchronous=synchronous)
    loads = {
        "low_load": (sizes.sequential_runs, 1),
        "concurrent": (sizes.concurrent_runs, sizes.concurrency),
    }
    samples: dict[str, dict[str, list[Sample]]] = {
        load: {name: [] for name in openers} for load in loads
    }
    for rep in range(sizes.reps):
        for load, (runs, concurrency) in loads.items():
            for name, opener in openers.items():  # paired: same minute, same noise
                _progress(
                    f"e2e rep {rep + 1}/{sizes.reps}: {name} {load} ({runs} runs @ {concurrency})"
                )
                samples[load][name].append(
                    await measure(opener, runs, concurrency, sizes.warmup_runs)
                )
    results = {
        load: {name: _summarize(reps, *loads[load]) for name, reps in by_engine.items()}
        for load, by_engine in samples.items()
    }
    return E2EResult(
        list(openers),
        synchronous,
        results["low_load"],
        results["concurrent"],
        _ratios(samples, "langgraph") if "langgraph" in openers else {},
        langgraph_error,
        _ratios(samples, "dbos") if "dbos" in openers else {},
        dbos_error,
    )


def _langgraph_unavailable() -> str | None:
    if langgraph_baseline.version() is None:
        return "langgraph is not installed (pip install -e '.[bench]')"
    try:
        __import__("langgraph.checkpoint.sqlite.aio")
    except ImportError as error:
        return f"langgraph's SQLite checkpointer cannot be imported: {error}"
    return None


def _dbos_unavailable() -> str | None:
    if dbos_baseline.version() is None:
        return "dbos is not installed (pip install -e '.[bench]')"
    return None


def _summarize(reps: list[Sample], runs: int, concurrency: int) -> LoadResult:
    rates = [sample.workflows_per_s for sample in reps]
    return LoadResult(
        runs=runs,
        concurrency=concurrency,
        reps=len(reps),
        workflows_per_s=median(rates),
        p50_ms=median(sample.p50_s * 1000 for sample in reps),
        p99_ms=median(percentile(sample.latencies_s, 0.99) * 1000 for sample in reps),
        cpu_ms_per_workflow=median(sample.cpu_ms_per_workflow for sample in reps),
        per_rep_workflows_per_s=rates,
    )


def _ratios(samples: dict[str, dict[str, list[Sample]]], baseline: str) -> dict[str, float]:
    """aob / `baseline` per repetition (run back to back), then the median."""
    ratios: dict[str, float] = {}
    for load, by_engine in samples.items():
        pairs = list(zip(by_engine["aob"], by_engine[baseline], strict=True))
        ratios[f"{load}_workflows_per_s"] = median(
            a.workflows_per_s / b.workflows_per_s for a, b in pairs
        )
        ratios[f"{load}_p50"] = median(a.p50_s / b.p50_s for a, b in pairs)
        ratios[f"{load}_cpu_per_workflow"] = median(
            a.cpu_ms_per_workflow / b.cpu_ms_per_workflow for a, b in pairs
        )
    return ratios


# --- report -------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "langgraph": langgraph_baseline.version(),
        "dbos": dbos_baseline.version(),
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return (
            "  "
            + first.ljust(widths[0])
            + "".join("  " + c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _aim(met: bool, text: str) -> str:
    return f"{text} {'met' if met else 'MISSED'}"


def render(env: dict[str, Any], fold_result: FoldResult | None, e2e: E2EResult | None) -> str:
    out = [
        f"aob core benchmark: python {env['python']}, {env['cpus']} CPUs, "
        f"load average {env['load_average_1m']} at start; medians over repetitions",
    ]
    if "gc" in env:
        out.append(f"garbage collector: {env['gc']}, the same for every engine")
    if fold_result is not None:
        out += ["", _render_fold(fold_result)]
    if e2e is not None:
        out += ["", _render_e2e(e2e)]
    return "\n".join(out)


def _render_fold(result: FoldResult) -> str:
    rates = result.events_per_s
    dict_rate = rates["dict-update fold (baseline)"]
    decode_rate = rates["decode only (baseline)"]
    rows = []
    for name, rate in rates.items():
        aim = ""
        if name == "fold":
            aim = _aim(rate >= AIM_FOLD_EVENTS_PER_S, f">= {AIM_FOLD_EVENTS_PER_S:,}")
        rows.append(
            [name, f"{rate:,.0f}", f"{rate / dict_rate:.3f}x", f"{rate / decode_rate:.2f}x", aim]
        )
    return "\n".join(
        [
            f"(a) Pure fold: {result.runs} runs of the 5-node fan-out/join DAG, "
            f"{result.events:,} events, {result.reps} reps",
            _table(["variant", "events/s", "vs dict-update", "vs decode-only", "aim"], rows),
            f"  per-rep ratio medians: fold/dict-update {result.fold_vs_dict_update:.3f}x, "
            f"fold/decode-only {result.fold_vs_decode:.2f}x",
        ]
    )


def _render_e2e(result: E2EResult) -> str:
    loads = (
        ("one at a time", "low_load", result.low_load),
        ("concurrent", "concurrent", result.concurrent),
    )
    rows = []
    for label, key, by_engine in loads:
        for name, r in by_engine.items():
            rows.append(
                [
                    f"{label} ({r.runs} runs @ {r.concurrency})",
                    name,
                    f"{r.workflows_per_s:,.0f}",
                    f"{r.p50_ms:.1f}",
                    f"{r.p99_ms:.1f}",
                    f"{r.cpu_ms_per_workflow:.2f}",
                    _e2e_aim(name, key, result),
                ]
            )
    header = ["load", "engine", "workflows/s", "p50 ms", "p99 ms", "CPU ms/wf", "aim"]
    stores = (
        "Kafka + Postgres (AOB_KAFKA_BOOTSTRAP, AOB_DATABASE_URL)"
        if os.environ.get("AOB_KAFKA_BOOTSTRAP")
        else f"embedded default, SQLite synchronous={result.synchronous}"
    )
    lines = [
        f"(b) End to end on {stores}: 5 transform nodes, fan-out/join, submitted by tag; "
        f"{result.low_load['aob'].reps} reps",
        _table(header, rows),
    ]
    for baseline, ratio in (("LangGraph", result.ratios), ("DBOS", result.dbos_ratios)):
        if not ratio:
            continue
        ratio_rows = [
            [
                label,
                f"{ratio[f'{key}_workflows_per_s']:.2f}x",
                f"{ratio[f'{key}_p50']:.2f}x",
                f"{ratio[f'{key}_cpu_per_workflow']:.2f}x",
            ]
            for label, key, _ in loads
        ]
        header = [f"aob / {baseline} (per-rep ratios)", "workflows/s", "p50", "CPU/wf"]
        lines += ["", _table(header, ratio_rows)]
    if result.langgraph_error:
        lines.append(f"  no LangGraph baseline: {result.langgraph_error}")
    if result.dbos_error:
        lines.append(f"  no DBOS baseline: {result.dbos_error}")
    return "\n".join(lines)


def _e2e_aim(engine: str, load: str, result: E2EResult) -> str:
    """Issue 15's aims, on aob's row: absolute, and against LangGraph when it ran."""
    if engine != "aob":
        return ""
    versus = result.ratios
    if load == "low_load":
        p50 = result.low_load["aob"].p50_ms
        aims = [_aim(p50 <= AIM_LOW_LOAD_P50_MS, f"p50 <= {AIM_LOW_LOAD_P50_MS:g} ms")]
        if versus:
            aims.append(_aim(versus["low_load_p50"] < 1, "< LangGraph"))
        return ", ".join(aims)
    rate = result.concurrent["aob"].workflows_per_s
    aims = [_aim(rate >= AIM_WORKFLOWS_PER_S, f">= {AIM_WORKFLOWS_PER_S:,} wf/s")]
    if versus:
        times = versus["concurrent_workflows_per_s"]
        aims.append(_aim(times >= AIM_VS_LANGGRAPH_WORKFLOWS_PER_S, ">= 4x LangGraph"))
    return ", ".join(aims)


# --- command line -------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 15 s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--only", choices=["fold", "e2e"], help="run one part only")
    parser.add_argument("--reps", type=int, help="repetitions of each end-to-end measurement")
    parser.add_argument("--runs", type=int, help="runs per concurrent measurement")
    parser.add_argument("--fold-runs", type=int, help="runs in the fold's event stream")
    parser.add_argument("--concurrency", type=int, help="concurrent clients")
    parser.add_argument("--no-langgraph", action="store_true", help="skip the LangGraph baseline")
    parser.add_argument("--no-dbos", action="store_true", help="skip the DBOS baseline")
    parser.add_argument(
        "--synchronous",
        default="NORMAL",
        choices=["NORMAL", "FULL"],
        help="SQLite synchronous level for both engines (default NORMAL, aob's)",
    )
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's garbage collector settings; by default the process tunes "
        "them as `aob server` does (start-up frozen, young passes every 10,000 "
        "allocations), for every engine measured",
    )
    parser.add_argument(
        "--sandboxed",
        action="store_true",
        help="write each node's expression so that only the jq sandbox evaluates it "
        "(`[expr] | first`), to measure what isolation costs programs off the fast path",
    )
    parser.add_argument(
        "--profile",
        choices=["fold", "e2e", "low_load"],
        help="print a cProfile of one measurement instead of benchmarking: the fold, "
        "aob's concurrent runs (e2e) or its runs one at a time (low_load)",
    )
    parser.add_argument(
        "--profile-out",
        metavar="FILE",
        help="with --profile, also save the raw cProfile stats to FILE (read them with "
        "pstats, e.g. sorted by cumulative time)",
    )
    args = parser.parse_args(argv)
    if args.profile_out and not args.profile:
        parser.error("--profile-out needs --profile")
    for name in ("reps", "runs", "fold_runs", "concurrency"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else Sizes()
    overrides = {
        "reps": args.reps,
        "concurrent_runs": args.runs,
        "fold_runs": args.fold_runs,
        "concurrency": args.concurrency,
    }
    return Sizes(**{**asdict(sizes), **{k: v for k, v in overrides.items() if v is not None}})


def profile(what: str, sizes: Sizes, synchronous: str, out: str | None = None) -> str:
    """cProfile of the fold, or of one aob measurement (concurrent, or one at a time);
    top functions by own time. Only the event loop's thread is profiled: py-spy
    (`py-spy record --threads`) sees the others."""
    profiler = cProfile.Profile()
    if what == "fold":
        stream = simulate_runs(sizes.fold_runs)
        profiler.runcall(fold_all, stream)
    else:
        runs, concurrency = (
            (sizes.sequential_runs, 1)
            if what == "low_load"
            else (sizes.concurrent_runs, sizes.concurrency)
        )

        async def measured() -> None:
            with tempfile.TemporaryDirectory(prefix="aob-bench-") as tmp:
                async with open_aob(Path(tmp), synchronous=synchronous) as runner:
                    await closed_loop(
                        runner, sizes.warmup_runs, min(concurrency, sizes.warmup_runs)
                    )
                    profiler.enable()
                    await closed_loop(runner, runs, concurrency)
                    profiler.disable()

        asyncio.run(measured())
    if out:
        profiler.dump_stats(out)
    report = _StringSink()
    stats = pstats.Stats(profiler, stream=report)  # type: ignore[arg-type]
    stats.sort_stats("tottime").print_stats(30)
    return report.text()


class _StringSink:
    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def text(self) -> str:
        return "".join(self._parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    if args.sandboxed:
        for node in FANOUT_JOIN["nodes"]:
            node["config"]["expr"] = f"[{node['config']['expr']}] | first"
    if not args.no_langgraph:
        langgraph_baseline.preload()
    if not args.no_dbos:
        dbos_baseline.preload()
    if not args.default_gc:
        tune_garbage_collection()  # after the baselines' imports: frozen alike
    if args.profile:
        print(profile(args.profile, sizes, args.synchronous, args.profile_out))
        return 0
    env = environment()
    env["gc"] = "CPython's default" if args.default_gc else "tuned as `aob server` does"
    fold_result = None
    e2e = None
    if args.only in (None, "fold"):
        _progress(f"fold: {sizes.fold_runs} runs, {sizes.fold_reps} reps")
        fold_result = bench_fold(sizes.fold_runs, sizes.fold_reps)
    if args.only in (None, "e2e"):
        e2e = asyncio.run(
            bench_e2e(
                sizes,
                synchronous=args.synchronous,
                with_langgraph=not args.no_langgraph,
                with_dbos=not args.no_dbos,
            )
        )
    if args.json:
        print(
            json.dumps(
                {
                    "environment": env,
                    "sizes": asdict(sizes),
                    "fold": asdict(fold_result) if fold_result else None,
                    "end_to_end": asdict(e2e) if e2e else None,
                    "aims": {
                        "fold_events_per_s": AIM_FOLD_EVENTS_PER_S,
                        "workflows_per_s": AIM_WORKFLOWS_PER_S,
                        "vs_langgraph_workflows_per_s": AIM_VS_LANGGRAPH_WORKFLOWS_PER_S,
                        "low_load_p50_ms": AIM_LOW_LOAD_P50_MS,
                    },
                },
                indent=2,
            )
        )
    else:
        print(render(env, fold_result, e2e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
