"""Fanout: events/s and delivery latency to 1, 100 and 1,000 SSE subscribers of one run.

    python -m bench.fanout [--quick] [--json] [--subscribers 1 100 1000] [--timed-every K]

A dev server runs in a subprocess. Per measurement, one run waits on a human
approval while N subscribers connect to its stream (`from=now`, raw sockets: the
client side stays cheap); then the approval is given and the run goes through a
loop of K `transform` iterations (~3 events each) and completes. Every subscriber
reads until the stream's `end`.

Reported per N (median over repetitions):
- produced events/s: the run's events over their span of `occurred_at` (what the
  engine generated; the baseline the fanout has to keep up with);
- per-subscriber events/s: a subscriber's events over its first-to-last receipt;
- aggregate deliveries/s: all subscribers' events over the whole delivery span;
- latency p50/p99: receipt wall time minus the event's `occurred_at` (ms, same
  clock: server and clients share the machine). Coordinator events carry the time
  of their cause, so this is from the event happening to a client holding it. Every
  K-th subscriber (`--timed-every`, 10) times every event it gets; the others only
  count theirs: the clients are one Python process on the server's machine, and
  what they spend reading is CPU the server then lacks;
- ratios of these to the 1-subscriber figures measured in the same invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import httpx

from bench.dev_server import dev_server

# A run event's `occurred_at` (the message's keys come in this order, so this is the
# message's own, not its payload's): a literal-prefixed pattern, found at C speed.
EVENT_TIMES = re.compile(rb'"event_id":"[^"]*","occurred_at":(\d+)')
END = b"event: end\r\n"  # a frame's first line


def workload(iterations: int) -> dict[str, Any]:
    return {
        "name": "bench-fanout-stream",
        "nodes": [
            {"id": "gate", "type": "hitl", "config": {"message": "go?"}},
            {"id": "start", "type": "noop", "config": {"output": iterations}},
            {
                "id": "tick",
                "type": "transform",
                "config": {"expr": "(.nodes.tick // .nodes.start) - 1"},
            },
            {"id": "done", "type": "noop"},
        ],
        "edges": [
            {"from": "gate", "to": "start"},
            {"from": "start", "to": "tick"},
            {
                "from": "tick",
                "to": "tick",
                "when": ".nodes.tick > 0",
                "loop": {"max_iterations": 1000},
            },
            {"from": "tick", "to": "done"},
        ],
    }


@dataclass
class Received:
    events: int = 0
    writes: int = 0  # chunks that carried events: what the server wrote per subscriber
    first: float = 0.0
    last: float = 0.0
    latencies_ms: list[int] = field(default_factory=list)


async def subscribe(
    host: str, port: int, run_id: str, connected: asyncio.Queue[None], timed: bool = True
) -> Received:
    """A minimal SSE client: HTTP/1.1, chunked body, frames by blank line, parsed in the
    protocol's callback (no task wake-up per read): a thousand of them in one process
    must cost the machine little beside the server they measure."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET /api/v1/runs/{run_id}/stream?heartbeat=120 HTTP/1.1\r\nHost: {host}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    client = _SseClient(request, loop.create_future(), lambda: connected.put_nowait(None), timed)
    transport, _ = await loop.create_connection(lambda: client, host, port)
    try:
        return await client.done
    finally:
        transport.close()


class _SseClient(asyncio.Protocol):
    """Reads one stream; `done` gets what it received once the stream's `end` came."""

    def __init__(
        self,
        request: bytes,
        done: asyncio.Future[Received],
        on_live: Callable[[], None],
        timed: bool,
    ) -> None:
        self.request = request
        self.done = done
        self.on_live = on_live
        self.raw = bytearray()  # received, not yet split into chunks
        self.frames = b""  # chunk bodies, not yet split into frames
        self.head = False
        self.announced = False
        self.got = Received()
        self.timed = timed  # reads each event's `occurred_at` (else only counts events)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or RuntimeError("the server closed the stream early"))

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.raw += data
        if not self.head:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.raw.startswith(b"HTTP/1.1 200"):
                self.done.set_exception(RuntimeError(self.raw[:end].decode(errors="replace")))
                return
            self.head = True
            del self.raw[: end + 4]
        now = time.monotonic()
        wall_ms = time.time_ns() // 1_000_000
        while not self.done.done():
            line_end = self.raw.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self.raw[:line_end], 16)
            start = line_end + 2
            if len(self.raw) < start + size + 2:
                return
            chunk = bytes(self.raw[start : start + size])
            del self.raw[: start + size + 2]
            if size == 0:
                self.done.set_result(self.got)
                return
            self._chunk(chunk, now, wall_ms)

    def _chunk(self, chunk: bytes, now: float, wall_ms: int) -> None:
        if not self.announced:  # the first chunk (retry:) means the subscription is live
            self.announced = True
            self.on_live()
        complete, _, self.frames = (self.frames + chunk).rpartition(b"\r\n\r\n")
        got = self.got
        if self.timed:
            times = EVENT_TIMES.findall(complete)  # one pass in C: the client stays cheap
            got.latencies_ms += [wall_ms - int(occurred) for occurred in times]
            events = len(times)
        else:
            events = complete.count(b"\r\n\r\nid: ") + complete.startswith(b"id: ")
        if events:
            got.events += events
            got.first = got.first or now
            got.last = now
            got.writes += 1
        if complete.startswith(END) or b"\r\n\r\n" + END in complete:
            self.done.set_result(got)


@dataclass
class Measurement:
    subscribers: int
    events: int
    produced_per_s: float
    per_subscriber_per_s: float
    aggregate_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    events_per_write: float  # median over subscribers: how much each write carried
    server_cpu_s: float  # the server process's CPU time from the approval to the last `end`
    client_cpu_s: float  # this process's (the subscribers'), over the same span


async def measure(url: str, subscribers: int, iterations: int, timed_every: int = 1) -> Measurement:
    host, port = url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=url, timeout=60.0, trust_env=False) as api:
        submitted = await api.post("/api/v1/runs", json={"definition": workload(iterations)})
        run_id = submitted.json()["run_id"]
        approval_id = await pending_approval(api, run_id)
        connected: asyncio.Queue[None] = asyncio.Queue()
        readers = [
            asyncio.create_task(
                subscribe(host, int(port), run_id, connected, timed=k % timed_every == 0)
            )
            for k in range(subscribers)
        ]
        for _ in range(subscribers):
            await connected.get()
        cpu_before = await _server_cpu_s(api)
        client_cpu_before = time.process_time()
        started = time.monotonic()
        decided = await api.post(
            f"/api/v1/approvals/{approval_id}/decide", json={"decision": "approve"}
        )
        decided.raise_for_status()
        results = await asyncio.gather(*readers)
        client_cpu_s = time.process_time() - client_cpu_before
        server_cpu_s = await _server_cpu_s(api) - cpu_before
        timeline = (await api.get(f"/api/v1/runs/{run_id}/events", params={"limit": 10000})).json()[
            "items"
        ]
    span_s = max((timeline[-1]["occurred_at"] - _decided_at(timeline)) / 1000, 1e-3)
    counts = {r.events for r in results}
    if len(counts) != 1:
        raise RuntimeError(f"subscribers got different numbers of events: {sorted(counts)}")
    events = counts.pop()
    latencies = sorted(ms for r in results for ms in r.latencies_ms)
    rates = [r.events / max(r.last - r.first, 1e-3) for r in results]
    whole = max(r.last for r in results) - min(min(r.first for r in results), started)
    return Measurement(
        subscribers=subscribers,
        events=events,
        produced_per_s=_events_after_decision(timeline) / span_s,
        per_subscriber_per_s=statistics.median(rates),
        aggregate_per_s=events * subscribers / max(whole, 1e-3),
        latency_p50_ms=float(latencies[len(latencies) // 2]),
        latency_p99_ms=float(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]),
        events_per_write=statistics.median(r.events / max(r.writes, 1) for r in results),
        server_cpu_s=server_cpu_s,
        client_cpu_s=client_cpu_s,
    )


async def _server_cpu_s(api: httpx.AsyncClient) -> float:
    """The server's CPU seconds so far (user + system, from its /metrics)."""
    text = (await api.get("/metrics")).text
    match = re.search(r"^process_cpu_seconds_total (\S+)$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("the server's /metrics has no process_cpu_seconds_total")
    return float(match.group(1))


def _decided_at(timeline: list[dict[str, Any]]) -> int:
    at: int = next(e["occurred_at"] for e in timeline if e["type"] == "ApprovalDecided")
    return at


def _events_after_decision(timeline: list[dict[str, Any]]) -> int:
    index = next(i for i, e in enumerate(timeline) if e["type"] == "ApprovalDecided")
    return len(timeline) - index


async def pending_approval(api: httpx.AsyncClient, run_id: str) -> str:
    for _ in range(400):
        items = (await api.get("/api/v1/approvals", params={"run_id": run_id})).json()["items"]
        if items:
            approval_id: str = items[0]["approval_id"]
            return approval_id
        await asyncio.sleep(0.025)
    raise RuntimeError("the run never asked for its approval")


def median_of(runs: list[Measurement]) -> Measurement:
    def med(name: str) -> float:
        return float(statistics.median(getattr(m, name) for m in runs))

    return Measurement(
        runs[0].subscribers,
        int(med("events")),
        med("produced_per_s"),
        med("per_subscriber_per_s"),
        med("aggregate_per_s"),
        med("latency_p50_ms"),
        med("latency_p99_ms"),
        med("events_per_write"),
        med("server_cpu_s"),
        med("client_cpu_s"),
    )


async def bench(
    subscriber_counts: list[int],
    iterations: int,
    reps: int,
    url: str | None = None,
    timed_every: int = 10,
) -> list[Measurement]:
    with contextlib.ExitStack() as stack:
        base = url or stack.enter_context(dev_server())
        await measure(base, 1, 20)  # warm-up
        return [
            median_of([await measure(base, count, iterations, timed_every) for _ in range(reps)])
            for count in subscriber_counts
        ]


def render(results: list[Measurement], iterations: int, reps: int) -> str:
    base = next((m for m in results if m.subscribers == 1), results[0])
    lines = [
        f"fanout: one run, {iterations} loop iterations; median of {reps} repetitions; "
        f"ratios to {base.subscribers} subscriber(s)",
        f"{'subs':>6} {'events':>7} {'produced/s':>11} {'per-sub/s':>10} {'ratio':>6} "
        f"{'aggregate/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'p99 ratio':>9} "
        f"{'ev/write':>8} {'cpu s':>6} {'client s':>8}",
    ]
    for m in results:
        ratio = m.per_subscriber_per_s / base.per_subscriber_per_s
        lines.append(
            f"{m.subscribers:>6} {m.events:>7} {m.produced_per_s:>11.0f} "
            f"{m.per_subscriber_per_s:>10.0f} {ratio:>6.2f} "
            f"{m.aggregate_per_s:>12.0f} {m.latency_p50_ms:>7.0f} {m.latency_p99_ms:>7.0f} "
            f"{m.latency_p99_ms / max(base.latency_p99_ms, 1):>9.2f} {m.events_per_write:>8.1f} "
            f"{m.server_cpu_s:>6.2f} {m.client_cpu_s:>8.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and repetitions")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--iterations", type=int, help="loop iterations per run (300; quick 100)")
    parser.add_argument("--reps", type=int, help="repetitions per count (3; quick 1)")
    parser.add_argument(
        "--timed-every",
        type=int,
        default=10,
        metavar="K",
        help="every K-th subscriber times each event (all count them): 10; 1 times all",
    )
    parser.add_argument(
        "--url",
        help="a running dev server (AOB_AUTH=off) instead of starting one: to profile it",
    )
    args = parser.parse_args(argv)
    iterations, reps = (100, 1) if args.quick else (300, 3)
    iterations = args.iterations or iterations
    reps = args.reps or reps
    results = asyncio.run(
        bench(args.subscribers, iterations, reps, args.url, max(args.timed_every, 1))
    )
    if args.json:
        print(
            json.dumps(
                {"iterations": iterations, "reps": reps, "results": [asdict(m) for m in results]},
                indent=2,
            )
        )
    else:
        print(render(results, iterations, reps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
