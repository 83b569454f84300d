"""End to end over HTTP: runs of the 5-node fan-out/join transform DAG (`bench.core`)
submitted by tag to the real dev server by this process, a separate load generator,
and observed complete.

    python -m bench.http_e2e [--runs 1000] [--concurrency 50] [--reps 2]
                             [--synchronous NORMAL FULL] [--auth off] [--py-spy FILE]
                             [--json]

The dev server (`python -m aob.platform dev`, the embedded default: SQLite log and
read models, every worker in the process; token authentication on, rate limits off)
runs in its own process. C clients each submit a run (`POST /api/v1/runs` by tag,
keep-alive HTTP/1.1), wait until it is observed finished, and submit the next, until
N runs are done. Completion is observed on the runs feed (`GET /api/v1/streams/runs`,
Server-Sent Events, one connection for all clients); a run the feed has not reported
within 10 s of its submission (a feed that dropped changes) is polled with
`GET /api/v1/runs/{id}`, and the report counts those. Latency is from sending the
submission to receiving its run's finished row. A 202 means the run's `RunSubmitted`
is durable under the SQLite synchronous mode named.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import positive_int
from bench.core import percentile
from bench.dev_server import DevServer, started_dev_server
from bench.http_submit import cpu_seconds, py_spy, store_workflow

TAG = "bench-http"
FINISHED = frozenset({"completed", "failed", "cancelled"})
FEED_GRACE_S = 10.0  # then a run the feed has not reported is polled
RUN_TIMEOUT_S = 60.0  # a run this late is a bug, not a slow run


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: the cheapest client, so that the load
    generator spends little of the machine's CPU (the server shares it)."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._headers = f"Host: {host}:{port}\r\n{extra}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        head = f"{method} {path} HTTP/1.1\r\n{self._headers}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + body)
        status_line, headers = await _read_head(self._reader)
        length = int(headers.get("content-length", "0"))
        payload = await self._reader.readexactly(length) if length else b""
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return int(status_line.split()[1]), payload

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    raw = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = raw.split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return status_line, headers


class FeedObserver:
    """Finished runs as the runs feed reports them: `wait(run_id)` returns when the
    run's finished row arrives (or has already arrived)."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port, self.headers = host, port, headers
        self.finished: dict[str, tuple[str, float]] = {}  # run id -> (status, seen at)
        self._waiters: dict[str, asyncio.Future[tuple[str, float]]] = {}
        self.ready = asyncio.Event()
        self.resyncs = 0  # the feed said it may have missed changes
        self._last_id = ""

    async def run(self) -> None:
        """Follow the feed, coming back after a `reconnect` notice or a closed stream."""
        while True:
            await self._follow()

    async def _follow(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        resume = f"Last-Event-ID: {self._last_id}\r\n" if self._last_id else ""
        writer.write(
            f"GET /api/v1/streams/runs?heartbeat=30 HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Accept: text/event-stream\r\n{extra}{resume}\r\n".encode()
        )
        try:
            status_line, _ = await _read_head(reader)
            if " 200 " not in status_line + " ":
                raise RuntimeError(f"the runs feed refused: {status_line}")
            buffer = b""
            while True:
                size = int((await reader.readline()).strip(), 16)
                if size == 0:
                    return
                buffer += (await reader.readexactly(size + 2))[:-2]
                *frames, buffer = buffer.split(b"\r\n\r\n")
                for frame in frames:
                    if self._frame(frame):
                        return
        finally:
            writer.close()

    def _frame(self, frame: bytes) -> bool:
        """Handle one SSE frame; True when the stream is to be reopened."""
        fields = dict(line.split(": ", 1) for line in frame.decode().split("\r\n") if ": " in line)
        if "id" in fields:
            self._last_id = fields["id"]
        event = fields.get("event")
        if event == "ready":
            if self.ready.is_set() and json.loads(fields["data"]).get("resync"):
                self.resyncs += 1
            self.ready.set()
        elif event == "run":
            row = json.loads(fields["data"])
            if row.get("status") in FINISHED:
                self.report(row["run_id"], row["status"])
        return event == "reconnect"

    def report(self, run_id: str, status: str) -> None:
        if run_id in self.finished:
            return
        seen = (status, time.perf_counter())
        self.finished[run_id] = seen
        waiter = self._waiters.pop(run_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(seen)

    async def wait(self, run_id: str, timeout: float) -> tuple[str, float]:
        if run_id in self.finished:
            return self.finished[run_id]
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[run_id] = waiter
        return await asyncio.wait_for(asyncio.shield(waiter), timeout)

    def forget(self, run_id: str) -> None:
        self.finished.pop(run_id, None)


@dataclass
class Sample:
    runs: int
    concurrency: int
    seconds: float
    workflows_per_s: float
    p50_ms: float
    p99_ms: float
    submit_p50_ms: float
    failed: int  # runs that did not complete (failed or cancelled)
    polled: int  # runs the feed had not reported within FEED_GRACE_S
    server_cpu_ms_per_workflow: float


class LoadGenerator:
    def __init__(self, server: DevServer, observer: FeedObserver) -> None:
        parts = urlsplit(server.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.server = server
        self.observer = observer
        self.body = json.dumps({"tag": TAG, "inputs": {"x": 1}}).encode()

    async def measure(self, runs: int, concurrency: int) -> Sample:
        remaining = iter(range(runs))
        latencies: list[float] = []
        submits: list[float] = []
        outcome = {"failed": 0, "polled": 0}

        async def client() -> None:
            connection = HttpConnection(self.host, self.port, self.server.headers())
            try:
                for _ in remaining:
                    status, latency, submit, polled = await self._one(connection)
                    latencies.append(latency)
                    submits.append(submit)
                    outcome["failed"] += status != "completed"
                    outcome["polled"] += polled
            finally:
                await connection.close()

        cpu_before = cpu_seconds(self.server.pid)
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(self.server.pid) - cpu_before
        return Sample(
            runs=runs,
            concurrency=concurrency,
            seconds=seconds,
            workflows_per_s=runs / seconds,
            p50_ms=percentile(latencies, 0.5) * 1000,
            p99_ms=percentile(latencies, 0.99) * 1000,
            submit_p50_ms=percentile(submits, 0.5) * 1000,
            failed=outcome["failed"],
            polled=outcome["polled"],
            server_cpu_ms_per_workflow=cpu * 1000 / runs,
        )

    async def _one(self, connection: HttpConnection) -> tuple[str, float, float, bool]:
        """Submit one run and wait until it is seen finished: (status, latency s,
        submission s, whether it had to be polled)."""
        sent = time.perf_counter()
        status, body = await connection.request("POST", "/api/v1/runs", self.body)
        accepted = time.perf_counter()
        if status != 202:
            raise RuntimeError(f"submission refused: {status} {body[:300]!r}")
        run_id = json.loads(body)["run_id"]
        polled = False
        try:
            outcome, seen = await self.observer.wait(run_id, FEED_GRACE_S)
        except TimeoutError:
            polled = True
            outcome, seen = await self._poll(connection, run_id)
        self.observer.forget(run_id)
        return outcome, seen - sent, accepted - sent, polled

    async def _poll(self, connection: HttpConnection, run_id: str) -> tuple[str, float]:
        deadline = time.perf_counter() + RUN_TIMEOUT_S
        while time.perf_counter() < deadline:
            status, body = await connection.request("GET", f"/api/v1/runs/{run_id}")
            if status == 200 and (found := json.loads(body).get("status")) in FINISHED:
                return found, time.perf_counter()
            await asyncio.sleep(0.05)
        raise RuntimeError(f"run {run_id} did not finish within {RUN_TIMEOUT_S} s")


async def measure_mode(args: argparse.Namespace, synchronous: str) -> list[Sample]:
    env = {"AOB_LOG_SYNCHRONOUS": synchronous}
    with started_dev_server(env, auth=args.auth == "tokens") as server:
        store_workflow(server)
        parts = urlsplit(server.url)
        observer = FeedObserver(parts.hostname or "127.0.0.1", parts.port or 80, server.headers())
        following = asyncio.create_task(observer.run())
        try:
            await asyncio.wait_for(observer.ready.wait(), 30)
            generator = LoadGenerator(server, observer)
            if args.warmup:
                await generator.measure(args.warmup, min(args.concurrency, args.warmup))
            samples = []
            for rep in range(args.reps):
                _progress(f"{synchronous}: repetition {rep + 1}/{args.reps}")
                with py_spy(server.pid, args.py_spy if rep == args.reps - 1 else None):
                    samples.append(await generator.measure(args.runs, args.concurrency))
            return samples
        finally:
            following.cancel()


def summary(synchronous: str, samples: list[Sample]) -> dict[str, Any]:
    def med(name: str) -> float:
        return float(statistics.median(getattr(s, name) for s in samples))

    return {
        "synchronous": synchronous,
        "workflows_per_s": med("workflows_per_s"),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "submit_p50_ms": med("submit_p50_ms"),
        "server_cpu_ms_per_workflow": med("server_cpu_ms_per_workflow"),
        "failed": sum(s.failed for s in samples),
        "polled": sum(s.polled for s in samples),
        "reps": [asdict(s) for s in samples],
    }


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"End to end over HTTP: {args.runs} runs of the 5-node fan-out/join transform DAG "
        f"by tag, {args.concurrency} concurrent clients (closed loop), {args.reps} reps; "
        f"dev server in its own process (embedded default, auth {args.auth}, rate limits "
        f"off); completion seen on the runs feed (SSE); cpus {os.cpu_count()}",
    ]
    for result in results:
        lines.append(f"\nSQLite synchronous={result['synchronous']}")
        lines.append("  rep    wf/s  p50 ms  p99 ms  submit p50  server cpu ms/wf  polled")
        for i, s in enumerate(result["reps"]):
            lines.append(
                f"  {i + 1:>3} {s['workflows_per_s']:>7.0f} {s['p50_ms']:>7.1f} "
                f"{s['p99_ms']:>7.1f} {s['submit_p50_ms']:>10.1f} "
                f"{s['server_cpu_ms_per_workflow']:>17.2f} {s['polled']:>7}"
            )
        lines.append(
            f"  median: {result['workflows_per_s']:.0f} wf/s (aim >= 600), p50 "
            f"{result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; not completed "
            f"{result['failed']}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_e2e",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=positive_int, default=1000, help="runs per repetition")
    parser.add_argument("--concurrency", type=positive_int, default=50, help="clients")
    parser.add_argument("--reps", type=positive_int, default=2)
    parser.add_argument("--warmup", type=int, default=100, help="runs before measuring")
    parser.add_argument(
        "--synchronous",
        nargs="+",
        default=["NORMAL"],
        choices=["NORMAL", "FULL"],
        help="SQLite synchronous modes to measure (default: NORMAL)",
    )
    parser.add_argument("--auth", choices=["tokens", "off"], default="tokens")
    parser.add_argument(
        "--py-spy",
        type=Path,
        help="record the dev server during the last rep (see bench.http_submit)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _main(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [summary(mode, await measure_mode(args, mode)) for mode in args.synchronous]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(_main(args))
    print(json.dumps(results, indent=2) if args.json else render(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
