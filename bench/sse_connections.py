"""Open SSE connections: the server's memory with 10,000 run streams open across runs.

    python -m bench.sse_connections [--connections 10000] [--runs 100] [--json]

A dev server runs in a subprocess; this process is the client. It submits `--runs`
runs that each wait on a human approval, then opens run streams (`from=now`) spread
evenly over them, in steps (`--steps`, default 10%, 25%, 50% and 100% of
`--connections`), from 127.0.0.1 on raw sockets (a small asyncio protocol per
connection: the client side stays cheap). After each step it reads the server's
resident memory (VmRSS in /proc/<pid>/status) and prints it beside the figure
before any stream was opened. A stream counts as open once its response has
started (headers and the `retry:` chunk).

Then every run's approval is given: each run completes and every stream must
receive its `end` (that proves the connections were live subscribers, not just
open sockets); the time until the last `end` is reported.

The open-files limit is raised to its hard limit here; the server inherits it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.dev_server import started_dev_server
from bench.fanout import pending_approval

HELD = {
    "name": "bench-sse-connections",
    "nodes": [
        {"id": "gate", "type": "hitl", "config": {"message": "go?"}},
        {"id": "done", "type": "noop"},
    ],
    "edges": [{"from": "gate", "to": "done"}],
}
CONNECTING_AT_ONCE = 256  # handshakes in flight: under the server's listen backlog
OPEN_TIMEOUT_S = 60.0  # per step
END_TIMEOUT_S = 60.0
FDS_BESIDES_CONNECTIONS = 200  # the server's log, read models, listener, ...


class StreamClient(asyncio.Protocol):
    """One run stream: a raw HTTP/1.1 GET, watched for its start and its `end`."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.tail = b""  # the last bytes received: a marker may straddle two reads
        self.received = 0
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.received and not data.startswith(b"HTTP/1.1 200"):
            self.opened.set_exception(RuntimeError(data[:200].decode(errors="replace")))
            return
        self.received += len(data)
        seen = self.tail + data
        self.tail = seen[-64:]
        if not self.opened.done() and b"retry:" in seen:
            self.opened.set_result(None)
        if b"event: end" in seen and not self.ended.done():
            self.ended.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.opened, self.ended):
            if future.done():
                continue
            if self.closing:
                future.cancel()
            else:
                future.set_exception(ConnectionError(f"the server closed the stream: {exc}"))

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


@dataclass
class Step:
    connections: int
    rss_mb: float
    growth_mb: float
    bytes_per_connection: float
    open_s: float  # time to open this step's new connections


@dataclass
class Report:
    runs: int
    baseline_rss_mb: float
    steps: list[Step]
    ended: int  # streams that received `end` after the approvals
    end_s: float  # from the first approval to the last `end`


def rss_bytes(pid: int) -> int:
    """The process's resident set size, from /proc/<pid>/status (VmRSS, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def raise_open_files_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"bench.sse_connections: needs {needed} open files, the hard limit is {hard} "
            "(raise it with `ulimit -Hn`, or pass a smaller --connections)"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def open_streams(
    host: str, port: int, run_ids: list[str], first: int, count: int
) -> list[StreamClient]:
    """`count` streams, the k-th (from `first`) on run k mod len(run_ids)."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def one(index: int) -> StreamClient:
        run_id = run_ids[index % len(run_ids)]
        request = (
            f"GET /api/v1/runs/{run_id}/stream?heartbeat=300 HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        async with gate:
            _, client = await loop.create_connection(lambda: StreamClient(request), host, port)
            await client.opened
        return client

    async with asyncio.timeout(OPEN_TIMEOUT_S):
        return await asyncio.gather(*(one(first + k) for k in range(count)))


async def submit_held_runs(api: httpx.AsyncClient, runs: int) -> list[tuple[str, str]]:
    """(run id, approval id) of `runs` runs, each waiting on its approval."""
    held = []
    for _ in range(runs):
        submitted = await api.post("/api/v1/runs", json={"definition": HELD})
        submitted.raise_for_status()
        run_id = submitted.json()["run_id"]
        held.append((run_id, await pending_approval(api, run_id)))
    return held


async def measure(
    url: str, pid: int, runs: int, steps: list[int], progress: Callable[[str], None]
) -> Report:
    host, port = url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=url, timeout=60.0, trust_env=False) as api:
        held = await submit_held_runs(api, runs)
        run_ids = [run_id for run_id, _ in held]
        # Warm the stream path (imports, first-use caches) before the baseline.
        warm = await open_streams(host, int(port), run_ids, 0, min(10, steps[0]))
        for client in warm:
            client.close()
        baseline = rss_bytes(pid)
        progress(f"no streams open: {baseline / 2**20:.1f} MB RSS (server pid {pid})")
        progress(HEADER)
        clients: list[StreamClient] = []
        measured = []
        for target in steps:
            started = time.monotonic()
            clients += await open_streams(
                host, int(port), run_ids, len(clients), target - len(clients)
            )
            opened_s = time.monotonic() - started
            rss = rss_bytes(pid)
            measured.append(
                Step(
                    connections=target,
                    rss_mb=rss / 2**20,
                    growth_mb=(rss - baseline) / 2**20,
                    bytes_per_connection=(rss - baseline) / target,
                    open_s=opened_s,
                )
            )
            progress(_row(measured[-1]))
        started = time.monotonic()
        for _, approval_id in held:
            decided = await api.post(
                f"/api/v1/approvals/{approval_id}/decide", json={"decision": "approve"}
            )
            decided.raise_for_status()
        ends = await asyncio.wait_for(
            asyncio.gather(*(c.ended for c in clients), return_exceptions=True), END_TIMEOUT_S
        )
        end_s = time.monotonic() - started
        for client in clients:
            client.close()
    return Report(
        runs=runs,
        baseline_rss_mb=baseline / 2**20,
        steps=measured,
        ended=sum(1 for outcome in ends if outcome is None),
        end_s=end_s,
    )


HEADER = f"{'streams':>8} {'RSS MB':>8} {'growth MB':>10} {'bytes/stream':>13} {'open s':>7}"


def _row(step: Step) -> str:
    return (
        f"{step.connections:>8} {step.rss_mb:>8.1f} {step.growth_mb:>10.1f} "
        f"{step.bytes_per_connection:>13.0f} {step.open_s:>7.1f}"
    )


def _print(line: str) -> None:
    print(line, flush=True)


def _ignore(line: str) -> None:
    pass


def default_steps(connections: int) -> list[int]:
    return sorted({max(1, connections * share // 100) for share in (10, 25, 50, 100)})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000, help="streams at the end")
    parser.add_argument("--runs", type=int, default=100, help="runs the streams spread over")
    parser.add_argument("--steps", type=int, nargs="+", help="stream counts to measure at")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.runs < 1:
        parser.error("--connections and --runs must be at least 1")
    args.steps = sorted({*(args.steps or default_steps(args.connections)), args.connections})
    if args.steps[0] < 1:
        parser.error("--steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_files_limit(args.connections + FDS_BESIDES_CONNECTIONS)
    with started_dev_server() as server:
        if not args.json:
            print(f"sse connections: {args.runs} runs held at an approval", flush=True)
        report = asyncio.run(
            measure(server.url, server.pid, args.runs, args.steps, _ignore if args.json else _print)
        )
    if args.json:
        print(json.dumps(asdict(report), indent=2))
        return 0 if report.ended == args.connections else 1
    print(
        f"approved {report.runs} runs: {report.ended}/{args.connections} streams got `end` "
        f"in {report.end_s:.1f} s"
    )
    top = report.steps[-1]
    verdict = "met" if top.connections >= 10_000 and top.rss_mb < 1024 else "not shown"
    print(f"aim (10,000 streams in under 1 GB RSS): {verdict} ({top.rss_mb:.0f} MB)")
    return 0 if report.ended == args.connections else 1


if __name__ == "__main__":
    raise SystemExit(main())
