"""The HTTP worker's benchmark: tasks/s through its handler against a local, explicitly
allowed HTTP server, and what the guard costs per request next to a plain httpx client.

    python -m bench.http_worker            # about a minute on 2 busy cores
    python -m bench.http_worker --quick    # a few seconds
    python -m bench.http_worker --json     # machine-readable instead of the table

The server runs in a child process (a minimal asyncio HTTP/1.1 keep-alive server with a
small fixed JSON answer), so the client side measured here keeps this process's core.
Each repetition sends the same number of GETs at the same concurrency through
(a) a plain `httpx.AsyncClient` (the baseline), (b) `HttpWorker.handle` with a literal
address URL, (c) `HttpWorker.handle` with a host name answered by an in-memory resolver
(so the per-request resolve-and-judge path is included, without DNS latency). The order
alternates between repetitions; ratios are taken per repetition, then their median.
Besides throughput, this process's CPU time per request is measured (`process_time`):
on a shared machine it is steadier than wall time, and the worker's CPU beyond httpx's
is its overhead per request. The guard alone (`check_url` + `check_address`, no I/O) is
timed too, per call.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from aob.events.types import NodeScheduled
from aob.workers.http import HttpWorker, HttpWorkerSettings
from aob.workers.http.guard import IPAddress, check_address, check_url

_BODY = b'{"ok":true,"items":[1,2,3],"name":"bench"}'
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(_BODY)}\r\n\r\n".encode()
    + _BODY
)
_NAME = "bench.example"


@dataclass(frozen=True)
class Sizes:
    requests: int = 1000
    concurrency: int = 16
    reps: int = 5
    guard_calls: int = 20_000


QUICK = Sizes(requests=200, concurrency=8, reps=2, guard_calls=2000)


@dataclass
class Figures:
    requests: int
    concurrency: int
    reps: int
    httpx_per_s: float
    worker_ip_per_s: float
    worker_name_per_s: float
    worker_ip_ratio: float  # worker / httpx throughput, median of per-repetition ratios
    worker_name_ratio: float
    httpx_cpu_us: float  # this process's CPU time per request
    worker_ip_cpu_us: float
    worker_name_cpu_us: float
    overhead_ip_ratio: float  # worker CPU / httpx CPU per request, median of per-rep ratios
    overhead_name_ratio: float
    guard_ip_us: float  # check_url on a literal address, per call
    guard_name_us: float  # check_url + check_address of one resolved address, per call


# --- the server (child process) -------------------------------------------------------------


class _FixedAnswer(asyncio.Protocol):
    """Answers every request head with the same response; GETs only, no request bodies."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4 :]
            self.transport.write(_RESPONSE)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_FixedAnswer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


class _ServerProcess:
    def __enter__(self) -> int:
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.http_worker", "--serve"],
            cwd=root,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        return int(self.process.stdout.readline())

    def __exit__(self, *_exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


# --- the clients ------------------------------------------------------------------------------


class _StaticResolver:
    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        return [ipaddress.IPv4Address("127.0.0.1")]


def _task(url: str) -> NodeScheduled:
    return NodeScheduled(
        "bench", "call", "http", 0, 1, {"url": url}, {"inputs": {}, "nodes": {}, "iteration": 0}
    )


@dataclass(frozen=True)
class _Run:
    per_s: float
    cpu_us: float  # this process's CPU time per request


async def _throughput(requests: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> _Run:
    """Requests per second, `concurrency` at a time (after one untimed warm-up round)."""
    await asyncio.gather(*(one() for _ in range(concurrency)))
    remaining = requests

    async def loop() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return _Run(requests / elapsed, cpu / requests * 1e6)


async def _measure(port: int, sizes: Sizes) -> Figures:
    ip_url = f"http://127.0.0.1:{port}/items"
    name_url = f"http://{_NAME}:{port}/items"
    settings = HttpWorkerSettings(  # type: ignore[call-arg]
        _env_file=None,
        allow=["127.0.0.1"],
        ports=[str(port)],
        max_connections=sizes.concurrency,
        max_keepalive_connections=sizes.concurrency,
    )
    worker = HttpWorker(settings, resolver=_StaticResolver(), registry=CollectorRegistry())
    limits = httpx.Limits(
        max_connections=sizes.concurrency, max_keepalive_connections=sizes.concurrency
    )
    plain = httpx.AsyncClient(trust_env=False, limits=limits)

    async def via_httpx() -> None:
        response = await plain.get(ip_url)
        assert response.status_code == 200
        response.json()

    async def via_worker_ip() -> None:
        output = await worker.handle(_task(ip_url))
        assert output["status"] == 200

    async def via_worker_name() -> None:
        output = await worker.handle(_task(name_url))
        assert output["status"] == 200

    runs: dict[str, list[_Run]] = {"httpx": [], "ip": [], "name": []}
    variants = {"httpx": via_httpx, "ip": via_worker_ip, "name": via_worker_name}
    try:
        for rep in range(sizes.reps):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for key in order:
                runs[key].append(
                    await _throughput(sizes.requests, sizes.concurrency, variants[key])
                )
    finally:
        await plain.aclose()
        await worker.aclose()
    guard_ip, guard_name = _guard_cost(settings, port, sizes.guard_calls)
    return _figures(sizes, runs, guard_ip, guard_name)


def _guard_cost(settings: HttpWorkerSettings, port: int, calls: int) -> tuple[float, float]:
    policy = settings.guard_policy()
    address = ipaddress.IPv4Address("127.0.0.1")
    ip_url, name_url = f"http://127.0.0.1:{port}/items", f"http://{_NAME}:{port}/items"
    started = time.perf_counter()
    for _ in range(calls):
        check_url(ip_url, policy)
    ip_us = (time.perf_counter() - started) / calls * 1e6
    started = time.perf_counter()
    for _ in range(calls):
        check_url(name_url, policy)
        check_address(address, policy, host=_NAME)
    name_us = (time.perf_counter() - started) / calls * 1e6
    return ip_us, name_us


def _figures(
    sizes: Sizes, runs: dict[str, list[_Run]], guard_ip: float, guard_name: float
) -> Figures:
    def per_s(run: _Run) -> float:
        return run.per_s

    def cpu_us(run: _Run) -> float:
        return run.cpu_us

    def median(key: str, pick: Callable[[_Run], float]) -> float:
        return statistics.median(pick(run) for run in runs[key])

    def ratio(key: str, pick: Callable[[_Run], float]) -> float:
        pairs = zip(runs[key], runs["httpx"], strict=True)
        return statistics.median(pick(w) / pick(h) for w, h in pairs)

    return Figures(
        requests=sizes.requests,
        concurrency=sizes.concurrency,
        reps=sizes.reps,
        httpx_per_s=median("httpx", per_s),
        worker_ip_per_s=median("ip", per_s),
        worker_name_per_s=median("name", per_s),
        worker_ip_ratio=ratio("ip", per_s),
        worker_name_ratio=ratio("name", per_s),
        httpx_cpu_us=median("httpx", cpu_us),
        worker_ip_cpu_us=median("ip", cpu_us),
        worker_name_cpu_us=median("name", cpu_us),
        overhead_ip_ratio=ratio("ip", cpu_us),
        overhead_name_ratio=ratio("name", cpu_us),
        guard_ip_us=guard_ip,
        guard_name_us=guard_name,
    )


def _table(f: Figures) -> str:
    return "\n".join(
        [
            f"HTTP worker: {f.requests} GETs at concurrency {f.concurrency}, median of {f.reps}"
            f" (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)",
            "                                 throughput          client CPU per request",
            f"  plain httpx client        {f.httpx_per_s:7.0f} req/s              "
            f"{f.httpx_cpu_us:6.0f} us",
            f"  worker, address URL       {f.worker_ip_per_s:7.0f} tasks/s  "
            f"{f.worker_ip_ratio:5.2f}x     {f.worker_ip_cpu_us:6.0f} us  "
            f"{f.overhead_ip_ratio:5.2f}x httpx",
            f"  worker, name + resolver   {f.worker_name_per_s:7.0f} tasks/s  "
            f"{f.worker_name_ratio:5.2f}x     {f.worker_name_cpu_us:6.0f} us  "
            f"{f.overhead_name_ratio:5.2f}x httpx",
            f"  guard alone: {f.guard_ip_us:.1f} us per address URL, {f.guard_name_us:.1f} us per"
            " name URL + one resolved address",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve())
        return 0
    sizes = QUICK if args.quick else Sizes()
    with _ServerProcess() as port:
        figures = asyncio.run(_measure(port, sizes))
    print(json.dumps(asdict(figures), indent=2) if args.json else _table(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
