"""The cluster benchmark: services as processes on Kafka + PostgreSQL.

    python -m bench.cluster            # a few minutes on 2 cores
    python -m bench.cluster --quick    # fewer runs and repetitions
    python -m bench.cluster --json

(a) Throughput with 1 and with 2 instances each of the coordinator and the workers
    (beside 1 api and 1 projector), for two workloads: the 5-node fan-out/join
    transform DAG of `bench.core`, and an http DAG (a transform, an http call to a
    local server that answers after 20 ms, a transform). A closed loop of clients
    submits through the API; a run is done when its terminal event is read off
    `aob.runs`. Median runs/s over repetitions, and the ratio 2 instances / 1.
(b) The pause during a rebalance, with 2 instances of each under a steady load: from
    the moment an instance leaves (SIGTERM: it leaves its groups; kill -9: the broker
    notices after the session timeout) or joins, to the first completed run submitted
    after that moment, on each partition of `aob.runs`; the worst partition is
    reported, beside the same figure with no rebalance at all.

Kafka and PostgreSQL are started here (aob.infra) unless AOB_KAFKA_BOOTSTRAP and
AOB_DATABASE_URL name running ones; each scale gets fresh topics (a topic prefix) and
a fresh schema. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from aob.events.codec import decode
from aob.events.log.consumer import Consumer
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import EventLog, TopicPartition
from aob.events.log.prefixed import PrefixedEventLog
from aob.events.partitioner import partition_for
from aob.events.types import RUNS_TOPIC, TERMINAL_RUN_EVENTS
from bench.core import FANOUT_JOIN

LISTENING = re.compile(r"listening on (http://\S+)")
RUNS_PARTITIONS = 4
HTTP_DELAY_S = 0.020
ROOT = Path(__file__).parents[1]


def http_dag(base_url: str) -> dict[str, Any]:
    return {
        "name": "bench-http",
        "nodes": [
            {"id": "prep", "type": "transform", "config": {"expr": ".inputs.x"}},
            {
                "id": "call",
                "type": "http",
                "config": {"method": "POST", "url": base_url + "/echo", "body": {"x": 1}},
            },
            {"id": "done", "type": "transform", "config": {"expr": ".nodes.prep"}},
        ],
        "edges": [{"from": "prep", "to": "call"}, {"from": "call", "to": "done"}],
        "output": ".nodes.done",
    }


# --- infrastructure ---------------------------------------------------------------------


@contextlib.contextmanager
def infrastructure() -> Iterator[tuple[str, str]]:
    """Kafka bootstrap and PostgreSQL DSN: the environment's, or started here."""
    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("AOB_KAFKA_BOOTSTRAP")
        dsn = os.environ.get("AOB_DATABASE_URL")
        if not bootstrap:
            from aob.infra.kafka import KafkaBroker

            _progress("starting Kafka")
            broker = KafkaBroker.start(die_with_parent=True)
            stack.callback(broker.stop, remove=True)
            bootstrap = broker.bootstrap
        if not dsn:
            from aob.infra.postgres import PostgresServer

            _progress("starting PostgreSQL")
            server = PostgresServer.start(fsync=False)
            stack.callback(server.stop)
            dsn = server.dsn
        yield bootstrap, dsn


class DelayServer:
    """Answers every request after `delay` seconds (a thread per request)."""

    def __init__(self, delay: float) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                threading.Event().wait(delay)  # the remote service's own latency
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> DelayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Services:
    """`python -m aob.platform <role>` processes sharing fresh topics and a fresh schema."""

    env: dict[str, str]
    directory: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def start(self, *names: str) -> None:
        for name in names:
            log = (self.directory / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "aob.platform", name.rsplit("-", 1)[0], "--port", "0"],
                cwd=self.directory,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
        for name in names:
            self.urls[name] = self._listening(name)

    def _listening(self, name: str) -> str:
        log = self.directory / f"{name}.log"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            found = list(LISTENING.finditer(log.read_text(errors="replace")))
            if found and self.processes[name].poll() is None:
                return found[-1].group(1)
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start in 90 s")

    def leave(self, name: str, how: signal.Signals) -> None:
        self.processes[name].send_signal(how)
        self.processes[name].wait(timeout=30)
        # Its log holds the old address: the next start must print a new one.
        (self.directory / f"{name}.log").rename(self.directory / f"{name}.{time.time_ns()}.log")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@contextlib.contextmanager
def services(bootstrap: str, dsn: str, scale: int, http_port: int) -> Iterator[Services]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_execute(dsn, f'CREATE SCHEMA "{schema}"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOB_")}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        AOB_AUTH="off",
        AOB_RATE_LIMIT="false",
        AOB_KAFKA_BOOTSTRAP=bootstrap,
        AOB_DATABASE_URL=_with_search_path(dsn, schema),
        AOB_TOPIC_PREFIX=f"bench.{uuid.uuid4().hex[:12]}.",
        AOB_KAFKA_POLL_INTERVAL="0.01",
        AOB_RUNS_PARTITIONS=str(RUNS_PARTITIONS),
        AOB_WORKFLOWS_PARTITIONS="1",
        AOB_TASKS_PARTITIONS=str(RUNS_PARTITIONS),
        AOB_WORKERS='["builtin", "http"]',
        AOB_HTTP_ALLOW=f"127.0.0.1:{http_port}",
    )
    with tempfile.TemporaryDirectory(prefix="aob-bench-cluster-") as directory:
        env["AOB_DATA_DIR"] = str(Path(directory) / "data")
        running = Services(env, Path(directory))
        try:
            names = ["api-1", "projector-1"]
            names += [
                f"{role}-{i}" for role in ("coordinator", "workers") for i in range(1, scale + 1)
            ]
            running.start(*names)
            yield running
        finally:
            running.stop()
            asyncio.run(_execute(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


async def _execute(dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _with_search_path(dsn: str, schema: str) -> str:
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options=-csearch_path%3D{schema}"


# --- load ---------------------------------------------------------------------------------


class Completions:
    """Follows every partition of `aob.runs` (no group) and notes when each run's
    terminal event is read, by partition."""

    def __init__(self, event_log: EventLog) -> None:
        self.log = event_log
        self.consumer = Consumer(event_log, None, [RUNS_TOPIC])
        self.done: dict[str, float] = {}
        self.waiting: dict[str, asyncio.Future[float]] = {}

    async def start(self) -> None:
        ends = await self.log.end_offsets(RUNS_TOPIC)
        await self.consumer.start({TopicPartition(RUNS_TOPIC, p): e for p, e in ends.items()})

    async def run(self, stop: asyncio.Event) -> None:
        markers = tuple(t.__name__.encode() for t in TERMINAL_RUN_EVENTS)
        while not stop.is_set():
            for record in await self.consumer.poll(timeout=0.05):
                if not any(m in record.value for m in markers):
                    continue
                if not isinstance(decode(record.value).payload, TERMINAL_RUN_EVENTS):
                    continue
                now = time.perf_counter()
                self.done.setdefault(record.key, now)
                waiter = self.waiting.pop(record.key, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)

    async def wait(self, run_id: str, timeout: float = 60.0) -> float:
        if run_id in self.done:
            return self.done[run_id]
        future = self.waiting.setdefault(run_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(future, timeout)


@dataclass
class Load:
    """A closed loop of `concurrency` clients submitting `definition` through the API."""

    api: httpx.AsyncClient
    completions: Completions
    definition: dict[str, Any]
    submitted: dict[str, float] = field(default_factory=dict)  # run id -> perf_counter

    async def one(self) -> str:
        started = time.perf_counter()
        body = {"definition": self.definition, "inputs": {"x": 1}}
        for _ in range(600):  # the API answers 503 while the log is away
            response = await self.api.post("/api/v1/runs", json=body)
            if response.status_code == 202:
                break
            await asyncio.sleep(0.05)
        response.raise_for_status()
        run_id: str = response.json()["run_id"]
        self.submitted[run_id] = started
        await self.completions.wait(run_id)
        return run_id

    async def closed_loop(self, runs: int, concurrency: int) -> float:
        """Runs/s of `runs` runs."""
        left = runs
        started = time.perf_counter()

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await self.one()

        await asyncio.gather(*(client() for _ in range(concurrency)))
        return runs / (time.perf_counter() - started)

    async def until(self, stop: asyncio.Event, concurrency: int) -> None:
        async def client() -> None:
            while not stop.is_set():
                await self.one()

        await asyncio.gather(*(client() for _ in range(concurrency)))


@contextlib.asynccontextmanager
async def following(env: dict[str, str]) -> Any:
    kafka = await KafkaEventLog.open(env["AOB_KAFKA_BOOTSTRAP"], client_id="aob-bench")
    event_log = PrefixedEventLog(kafka, env["AOB_TOPIC_PREFIX"])
    completions = Completions(event_log)
    await completions.start()
    stop = asyncio.Event()
    task = asyncio.create_task(completions.run(stop))
    try:
        yield completions
    finally:
        stop.set()
        await task
        await event_log.close()


async def throughput(
    running: Services, definition: dict[str, Any], runs: int, reps: int, concurrency: int
) -> list[float]:
    async with (
        following(running.env) as completions,
        httpx.AsyncClient(base_url=running.urls["api-1"], timeout=30) as api,
    ):
        load = Load(api, completions, definition)
        await load.closed_loop(concurrency * 2, concurrency)  # warm up
        return [await load.closed_loop(runs, concurrency) for _ in range(reps)]


def pause_after(load: Load, moment: float) -> float:
    """The worst partition's wait, from `moment` to the first completion of a run
    submitted after it; inf when a partition completed none."""
    first: dict[int, float] = {}
    for run_id, submitted in load.submitted.items():
        done = load.completions.done.get(run_id)
        if submitted < moment or done is None:
            continue
        partition = partition_for(run_id, RUNS_PARTITIONS)
        first[partition] = min(first.get(partition, done), done)
    if len(first) < RUNS_PARTITIONS:
        return float("inf")
    return max(first.values()) - moment


async def rebalance_pauses(running: Services, concurrency: int, settle: int) -> dict[str, float]:
    """Pauses (s) as instances leave and join under a steady transform load."""
    events: list[tuple[str, str, signal.Signals | None]] = [
        ("steady (no rebalance)", "", None),
        ("coordinator leaves (SIGTERM)", "coordinator-2", signal.SIGTERM),
        ("coordinator joins", "coordinator-2", None),
        ("workers leave (SIGTERM)", "workers-2", signal.SIGTERM),
        ("workers join", "workers-2", None),
        ("workers killed (kill -9)", "workers-2", signal.SIGKILL),
        ("coordinator killed (kill -9)", "coordinator-2", signal.SIGKILL),
    ]
    pauses: dict[str, float] = {}
    async with (
        following(running.env) as completions,
        httpx.AsyncClient(base_url=running.urls["api-1"], timeout=30) as api,
    ):
        load = Load(api, completions, FANOUT_JOIN)
        stop = asyncio.Event()
        steady = asyncio.create_task(load.until(stop, concurrency))
        try:
            for label, name, how in events:
                await _settled(load, settle)
                moment = time.perf_counter()
                if how is not None:
                    await asyncio.to_thread(running.leave, name, how)
                elif name:
                    await asyncio.to_thread(running.start, name)
                    moment = time.perf_counter()  # it has joined once it listens
                await _settled(load, settle, after=moment)
                pauses[label] = pause_after(load, moment)
                _progress(f"  {label}: {pauses[label] * 1000:.0f} ms")
                if how == signal.SIGKILL:
                    await asyncio.to_thread(running.start, name)
        finally:
            stop.set()
            await steady
    return pauses


async def _settled(load: Load, runs: int, after: float = 0.0) -> None:
    """Until `runs` runs submitted after `after` completed on every partition."""
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        counts = [0] * RUNS_PARTITIONS
        for run_id, submitted in list(load.submitted.items()):
            if submitted >= after and run_id in load.completions.done:
                counts[partition_for(run_id, RUNS_PARTITIONS)] += 1
        if min(counts) >= runs:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the load did not settle within 120 s")


# --- the whole -----------------------------------------------------------------------------


@dataclass
class Sizes:
    runs: int
    reps: int
    concurrency: int
    settle: int


FULL = Sizes(runs=150, reps=3, concurrency=16, settle=3)
QUICK = Sizes(runs=60, reps=2, concurrency=16, settle=2)


def bench(sizes: Sizes) -> dict[str, Any]:
    results: dict[str, Any] = {"throughput": {}, "pauses": {}}
    with infrastructure() as (bootstrap, dsn), DelayServer(HTTP_DELAY_S) as remote:
        workloads = {
            "transform (5-node DAG)": FANOUT_JOIN,
            f"http ({HTTP_DELAY_S * 1000:.0f} ms server)": http_dag(
                f"http://127.0.0.1:{remote.port}"
            ),
        }
        for scale in (1, 2):
            _progress(f"starting 1 api, 1 projector, {scale} coordinator(s), {scale} workers")
            with services(bootstrap, dsn, scale, remote.port) as running:
                for name, definition in workloads.items():
                    rates = asyncio.run(
                        throughput(running, definition, sizes.runs, sizes.reps, sizes.concurrency)
                    )
                    results["throughput"].setdefault(name, {})[scale] = rates
                    _progress(f"  {name} x{scale}: {[round(r, 1) for r in rates]} runs/s")
                if scale == 2:
                    results["pauses"] = asyncio.run(
                        rebalance_pauses(running, sizes.concurrency, sizes.settle)
                    )
    return results


def render(results: dict[str, Any], sizes: Sizes) -> str:
    lines = [
        f"cluster throughput, runs/s (median of {sizes.reps} x {sizes.runs} runs, "
        f"{sizes.concurrency} concurrent clients; 1 api, 1 projector)",
        f"{'workload':<26}{'1 coord + 1 workers':>22}{'2 coord + 2 workers':>22}{'ratio':>8}",
    ]
    for name, by_scale in results["throughput"].items():
        one, two = statistics.median(by_scale[1]), statistics.median(by_scale[2])
        lines.append(f"{name:<26}{one:>22.1f}{two:>22.1f}{two / one:>7.2f}x")
    lines.append("")
    lines.append("pause during a rebalance (2 + 2 instances, steady transform load): time to")
    lines.append("the first completed run submitted after the event, worst of 4 partitions")
    for label, pause in results["pauses"].items():
        lines.append(f"  {label:<34}{pause * 1000:>8.0f} ms")
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer runs and repetitions")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    results = bench(sizes)
    if args.json:
        print(json.dumps(results | {"sizes": sizes.__dict__}, indent=2))
    else:
        print(render(results, sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
