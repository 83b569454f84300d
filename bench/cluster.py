"""The cluster benchmark: services as processes on Kafka + PostgreSQL.

    python -m bench.cluster                 # issue 15's aim: 1 instance of each service
    python -m bench.cluster --quick         # fewer runs and repetitions
    python -m bench.cluster --py-spy DIR    # also a py-spy profile of each service
    python -m bench.cluster --no-fsync      # PostgreSQL without fsync (not durable)
    python -m bench.cluster --scaling       # 1 vs 2 coordinators+workers, rebalances
    python -m bench.cluster --json

The aim (default): 1 api, 1 projector, 1 coordinator and 1 workers process
(`python -m aob.platform <role>`), a single-node KRaft broker (aob.infra.kafka) and a
PostgreSQL server (aob.infra.postgres), all on this machine. Two figures for the
5-node fan-out/join transform DAG of `bench.core`:

* throughput: a closed loop of clients submits through the API's HTTP endpoint; a run
  is done when its terminal event is read off `aob.runs`. Runs/s per repetition and
  the median, with the CPU each process spent per run;
* latency at low load: runs one at a time, submit to terminal event read; p50 and p90.

Durability, printed with the figures: Kafka appends with acks=all and idempotence,
every service write fenced by a Kafka transaction, read_committed readers; the
broker's log flush is Kafka's default (the OS page cache, no fsync per append: a
single-node broker survives a process crash, not a power loss). PostgreSQL runs with
fsync=on and synchronous_commit=on (unless --no-fsync).

--scaling: (a) throughput with 1 and with 2 instances each of the coordinator and
the workers, for the transform DAG and an http DAG (a transform, an http call to a
local server that answers after 20 ms, a transform); (b) the pause during a rebalance
with 2 instances of each under a steady load: from the moment an instance leaves
(SIGTERM, or kill -9: the broker notices after the session timeout) or joins, to the
first completed run submitted after it, worst partition of `aob.runs`, beside the
same figure with no rebalance at all.

Every service runs with its default settings but for authentication and rate limits
(off) and the topics' partitions (4). In particular `AOB_KAFKA_POLL_INTERVAL` keeps its
default (0.1 s): at 0.01 s (what this benchmark set before) each process's watcher and
delta feed asked the broker 100 times a second, and runs cost ~20% more CPU (kafka,
api, projector, coordinator) for no gain in latency at low load.

Kafka and PostgreSQL are started here (aob.infra) unless AOB_KAFKA_BOOTSTRAP and
AOB_DATABASE_URL name running ones; each service set gets fresh topics (a topic
prefix) and a fresh schema. Traffic goes to 127.0.0.1 only.
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


@dataclass
class Infrastructure:
    bootstrap: str
    dsn: str
    broker_pid: int | None = None  # started here: its CPU is counted
    postgres_pid: int | None = None


@contextlib.contextmanager
def infrastructure(fsync: bool = True) -> Iterator[Infrastructure]:
    """Kafka bootstrap and PostgreSQL DSN: the environment's, or started here."""
    with contextlib.ExitStack() as stack:
        found = Infrastructure(
            os.environ.get("AOB_KAFKA_BOOTSTRAP", ""), os.environ.get("AOB_DATABASE_URL", "")
        )
        if not found.bootstrap:
            from aob.infra.kafka import KafkaBroker

            _progress("starting Kafka")
            broker = KafkaBroker.start(die_with_parent=True)
            stack.callback(broker.stop, remove=True)
            found.bootstrap, found.broker_pid = broker.bootstrap, broker.pid
        if not found.dsn:
            from aob.infra.postgres import PostgresServer

            _progress("starting PostgreSQL")
            server = PostgresServer.start(fsync=fsync)
            stack.callback(server.stop)
            found.dsn = server.dsn
            pid_file = server.data_dir / "postmaster.pid"
            found.postgres_pid = int(pid_file.read_text().split()[0])
        yield found


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

    def report(self, lines: int = 40) -> None:
        """Each service's state and the end of its log, on stderr."""
        for name, process in self.processes.items():
            state = "running" if process.poll() is None else f"exited {process.returncode}"
            log = (self.directory / f"{name}.log").read_text(errors="replace").splitlines()
            print(f"--- {name} ({state}), last {lines} log lines:", file=sys.stderr)
            print("\n".join(log[-lines:]), file=sys.stderr)

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
def services(
    bootstrap: str, dsn: str, scale: int, http_port: int | None = None
) -> Iterator[Services]:
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
        AOB_RUNS_PARTITIONS=str(RUNS_PARTITIONS),
        AOB_WORKFLOWS_PARTITIONS="1",
        AOB_TASKS_PARTITIONS=str(RUNS_PARTITIONS),
        AOB_WORKERS='["builtin", "http"]' if http_port else '["builtin"]',
    )
    if http_port:
        env["AOB_HTTP_ALLOW"] = f"127.0.0.1:{http_port}"
    with tempfile.TemporaryDirectory(prefix="aob-bench-cluster-") as directory:
        env["AOB_DATA_DIR"] = str(Path(directory) / "data")
        running = Services(env, Path(directory))
        try:
            names = ["api-1", "projector-1"]
            names += [
                f"{role}-{i}" for role in ("coordinator", "workers") for i in range(1, scale + 1)
            ]
            running.start(names[0])  # creates the topics: the others then find them
            running.start(*names[1:])
            yield running
        except BaseException:
            running.report()  # the services' side of a failed measurement
            raise
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


def api_client(url: str, connections: int = 100) -> httpx.AsyncClient:
    """A client of the API. Idle connections are dropped after 2 s, before the server's
    keep-alive timeout (uvicorn's 5 s, httpx's default too) could close one just as a
    request goes out on it: the submission then failed with a ReadError."""
    limits = httpx.Limits(max_connections=connections, keepalive_expiry=2.0)
    return httpx.AsyncClient(base_url=url, timeout=30, limits=limits)


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
        api_client(running.urls["api-1"]) as api,
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
        api_client(running.urls["api-1"]) as api,
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


# --- the aim: one instance of each service ----------------------------------------------

AIM_RUNS_PER_S = 500.0
AIM_P50_MS = 30.0
ROLES = ("api", "projector", "coordinator", "workers")


@dataclass
class AimSizes:
    runs: int  # per throughput repetition
    reps: int
    concurrency: int
    one_at_a_time: int  # runs of the latency figure


AIM_FULL = AimSizes(runs=600, reps=3, concurrency=64, one_at_a_time=60)
AIM_QUICK = AimSizes(runs=200, reps=2, concurrency=64, one_at_a_time=30)


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """User + system CPU of a process (and of its direct children: PostgreSQL's
    backends), from /proc; 0 once it is gone."""
    pids = [pid]
    if with_children:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _stat(int(entry.name))[1:2] == [pid]:
                pids.append(int(entry.name))
    tick = os.sysconf("SC_CLK_TCK")
    return sum(sum(_stat(p)[2:4]) for p in pids) / tick


def _stat(pid: int) -> list[int]:
    """(pid, ppid, utime, stime) of a process; [] once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    fields = text[text.rindex(")") + 2 :].split()
    return [pid, int(fields[1]), int(fields[11]), int(fields[12])]


class CpuMeter:
    """CPU seconds spent by each service process (and the broker and PostgreSQL when
    started here) between `start` and `stop`."""

    def __init__(self, running: Services, infra: Infrastructure) -> None:
        self.pids = {name: (proc.pid, False) for name, proc in running.processes.items()}
        if infra.broker_pid is not None:
            self.pids["kafka"] = (infra.broker_pid, False)
        if infra.postgres_pid is not None:
            self.pids["postgres"] = (infra.postgres_pid, True)
        self._before: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def start(self) -> None:
        self._before = {n: cpu_seconds(pid, c) for n, (pid, c) in self.pids.items()}

    def stop(self) -> None:
        for name, (pid, children) in self.pids.items():
            self.spent[name] = self.spent.get(name, 0.0) + (
                cpu_seconds(pid, children) - self._before[name]
            )


class PySpy:
    """`py-spy record` of each service process while in use (raw collapsed stacks)."""

    def __init__(self, running: Services, directory: Path | None) -> None:
        self.directory = directory
        self.running = running
        self.recorders: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> PySpy:
        if self.directory is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).with_name("py-spy")
        for name, process in self.running.processes.items():
            self.recorders.append(
                subprocess.Popen(
                    [
                        str(spy),
                        "record",
                        "--pid",
                        str(process.pid),
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "-o",
                        str(self.directory / f"{name}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        for recorder in self.recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in self.recorders:
            try:
                recorder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                recorder.kill()


def profile_summary(path: Path, top: int = 12) -> list[str]:
    """The functions most often on the stack (inclusive) and at its top (self) in a
    py-spy raw profile, as shares of its samples."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
            for f in stack.split(";")
        ]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return ["  (no samples)"]
    lines = [f"  {total} samples; self:"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    lines.append("  inclusive:")
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[: top * 2]:
        lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    return lines


async def one_at_a_time(running: Services, runs: int) -> list[float]:
    """Seconds from submit to terminal event read, of `runs` runs one after another."""
    async with (
        following(running.env) as completions,
        api_client(running.urls["api-1"]) as api,
    ):
        load = Load(api, completions, FANOUT_JOIN)
        for _ in range(5):  # warm up
            await load.one()
        latencies = []
        for _ in range(runs):
            run_id = await load.one()
            latencies.append(completions.done[run_id] - load.submitted[run_id])
        return latencies


async def metered_throughput(
    running: Services, sizes: AimSizes, meter: CpuMeter, spy: Path | None
) -> list[float]:
    async with (
        following(running.env) as completions,
        api_client(running.urls["api-1"], sizes.concurrency) as api,
    ):
        load = Load(api, completions, FANOUT_JOIN)
        await load.closed_loop(sizes.concurrency * 2, sizes.concurrency)  # warm up
        rates = []
        with PySpy(running, spy):
            for _ in range(sizes.reps):
                meter.start()
                rates.append(await load.closed_loop(sizes.runs, sizes.concurrency))
                meter.stop()
                _progress(f"  {rates[-1]:.1f} runs/s")
        return rates


async def durability(dsn: str) -> dict[str, str]:
    connection = await asyncpg.connect(dsn)
    try:
        settings = {
            name: str(await connection.fetchval(f"SHOW {name}"))
            for name in ("fsync", "synchronous_commit", "full_page_writes")
        }
    finally:
        await connection.close()
    return {
        "kafka": "acks=all, idempotent producers, a transaction per partition per commit "
        "(read_committed readers); 1 broker, log flush by the OS (Kafka's default)",
        "postgres": ", ".join(f"{k}={v}" for k, v in settings.items()),
    }


def aim(sizes: AimSizes, fsync: bool, spy: Path | None) -> dict[str, Any]:
    with infrastructure(fsync) as infra:
        _progress("starting 1 api, 1 projector, 1 coordinator, 1 workers")
        with services(infra.bootstrap, infra.dsn, 1) as running:
            meter = CpuMeter(running, infra)
            _progress(f"throughput: {sizes.reps} x {sizes.runs} runs @ {sizes.concurrency}")
            rates = asyncio.run(metered_throughput(running, sizes, meter, spy))
            _progress(f"latency: {sizes.one_at_a_time} runs one at a time")
            latencies = asyncio.run(one_at_a_time(running, sizes.one_at_a_time))
            return {
                "throughput": rates,
                "latency_ms": [1000 * x for x in latencies],
                "cpu_ms_per_run": {
                    name: 1000 * spent / (sizes.runs * sizes.reps)
                    for name, spent in meter.spent.items()
                },
                "durability": asyncio.run(durability(infra.dsn)),
            }


def render_aim(results: dict[str, Any], sizes: AimSizes, spy: Path | None) -> str:
    rates, latencies = results["throughput"], sorted(results["latency_ms"])
    rate, p50 = statistics.median(rates), statistics.median(latencies)
    p90 = latencies[int(0.9 * (len(latencies) - 1))]
    cpu = results["cpu_ms_per_run"]
    lines = [
        "Kafka + PostgreSQL, 1 api, 1 projector, 1 coordinator, 1 workers (processes);",
        "the 5-node fan-out/join transform DAG submitted over HTTP",
        f"throughput ({sizes.reps} x {sizes.runs} runs, {sizes.concurrency} clients): "
        f"median {rate:.1f} runs/s, per rep {[round(r, 1) for r in rates]} "
        f"(aim >= {AIM_RUNS_PER_S:.0f}: {rate / AIM_RUNS_PER_S:.2f}x)",
        f"one at a time ({len(latencies)} runs): p50 {p50:.1f} ms, p90 {p90:.1f} ms "
        f"(aim p50 <= {AIM_P50_MS:.0f} ms)",
        "CPU ms per run: "
        + ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())
        + f"; total {sum(cpu.values()):.2f}",
        "durability: Kafka " + results["durability"]["kafka"],
        "            PostgreSQL " + results["durability"]["postgres"],
    ]
    if spy is not None:
        for path in sorted(spy.glob("*.txt")):
            lines += [f"py-spy {path.stem}:", *profile_summary(path)]
    return "\n".join(lines)


# --- the whole -----------------------------------------------------------------------------


@dataclass
class Sizes:
    runs: int
    reps: int
    concurrency: int
    settle: int


FULL = Sizes(runs=150, reps=3, concurrency=16, settle=3)
QUICK = Sizes(runs=60, reps=2, concurrency=16, settle=2)


def scaling(sizes: Sizes, fsync: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"throughput": {}, "pauses": {}}
    with infrastructure(fsync) as infra, DelayServer(HTTP_DELAY_S) as remote:
        bootstrap, dsn = infra.bootstrap, infra.dsn
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


def render_scaling(results: dict[str, Any], sizes: Sizes) -> str:
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
    parser.add_argument(
        "--scaling", action="store_true", help="1 vs 2 coordinators+workers, and rebalances"
    )
    parser.add_argument(
        "--no-fsync", action="store_true", help="PostgreSQL with fsync off (not durable)"
    )
    parser.add_argument(
        "--py-spy", type=Path, metavar="DIR", help="py-spy profiles of the services here"
    )
    args = parser.parse_args(argv)
    fsync = not args.no_fsync
    results: dict[str, Any]
    if args.scaling:
        sizes = QUICK if args.quick else FULL
        results = scaling(sizes, fsync)
        text = render_scaling(results, sizes)
        results |= {"sizes": sizes.__dict__}
    else:
        aim_sizes = AIM_QUICK if args.quick else AIM_FULL
        results = aim(aim_sizes, fsync, args.py_spy)
        text = render_aim(results, aim_sizes, args.py_spy)
        results |= {"sizes": aim_sizes.__dict__}
    print(json.dumps(results, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
