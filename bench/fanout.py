"""Fanout: events/s and delivery latency to 1, 100 and 1,000 SSE subscribers of one run.

    python -m bench.fanout [--quick] [--json] [--subscribers 1 100 1000] [--timed-every K]
                           [--pace-ms MS]

A dev server runs in a subprocess. Per measurement, one run waits on a human
approval while N subscribers connect to its stream (`from=now`, raw sockets: the
client side stays cheap); then the approval is given and the run goes through a
loop of K `transform` iterations (~3 events each) and completes. Every subscriber
reads until the stream's `end`.

Two workloads are measured, each on its own dev server:
- the burst: the loop's ticks follow each other as fast as the engine decides them
  (5,000-9,000 events/s here). At 1,000 subscribers that is more bytes a second than
  the machine moves over loopback TCP beside the clients, so its latency is the time
  the backlog takes to drain: a throughput figure;
- the paced run (`--pace-ms`, 10; 0 skips it): each tick is followed by an `http`
  node's GET of a local server that answers after MS ms (allowed through the SSRF
  guard with `AOB_HTTP_ALLOW`), as a run waiting on outside services does: its
  latency is the delivery latency below saturation.

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
PACE_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
CHUNK_BOUNDARY = b"\r\n\r\n\r\n"  # a frame's blank line, the chunk's end, the next size line


def workload(iterations: int, pace_url: str | None = None) -> dict[str, Any]:
    """A human gate, then a loop of `iterations` ticks; with `pace_url`, each tick is
    followed by an `http` GET of it (an outside call that takes its time)."""
    loop_back = "pause" if pace_url else "tick"
    nodes: list[dict[str, Any]] = [
        {"id": "gate", "type": "hitl", "config": {"message": "go?"}},
        {"id": "start", "type": "noop", "config": {"output": iterations}},
        {
            "id": "tick",
            "type": "transform",
            "config": {"expr": "(.nodes.tick // .nodes.start) - 1"},
        },
        {"id": "done", "type": "noop"},
    ]
    edges: list[dict[str, Any]] = [
        {"from": "gate", "to": "start"},
        {"from": "start", "to": "tick"},
        {
            "from": loop_back,
            "to": "tick",
            "when": ".nodes.tick > 0",
            "loop": {"max_iterations": 1000},
        },
        {"from": loop_back, "to": "done"},
    ]
    if pace_url:
        nodes.append({"id": "pause", "type": "http", "config": {"url": pace_url}})
        edges.append({"from": "tick", "to": "pause"})
    return {"name": "bench-fanout-stream", "nodes": nodes, "edges": edges}


async def pace_server(delay_ms: int) -> asyncio.Server:
    """A local HTTP/1.1 keep-alive server answering every GET after `delay_ms`: what
    paces the loop's ticks (the outside service a real run would wait on)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(delay_ms / 1000)
                writer.write(PACE_ANSWER)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the dev server closed its connection
        except asyncio.CancelledError:
            pass  # the benchmark's loop ended: a handler that raised would be logged
        finally:
            writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


@dataclass
class Received:
    events: int = 0
    writes: int = 0  # chunks that carried events (timed subscribers): the server's writes
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
    """Reads one stream; `done` gets what it received once the stream's `end` came.

    It scans the bytes as they arrive, once, without undoing the chunked encoding:
    the server writes whole frames per chunk, a frame's lines are whole lines of the
    byte stream (a chunk's size line is a line of its own), and a JSON `data:` line
    holds no raw newline. So complete lines (up to the last newline received) can be
    searched as they are: an event is a line starting `id: `, the end a line
    `event: end`, a write a chunk boundary (a frame's blank line, the chunk's CRLF,
    the next size line: the only place three CRLFs follow each other). The last 4
    bytes of what was scanned go before the next scan, so that a pattern cut by a
    read is found once."""

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
        self.head = bytearray()  # the response head, until its blank line came
        self.body_started = False
        self.carry = b""  # received after the last newline: an incomplete line
        self.tail = b""  # the last bytes scanned (patterns cut by a read)
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
        if not self.body_started:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 200"):
                self.done.set_exception(RuntimeError(self.head[:end].decode(errors="replace")))
                return
            self.body_started = True
            data = bytes(self.head[end + 4 :])
        received = self.carry + data if self.carry else data
        cut = received.rfind(b"\n") + 1
        lines, self.carry = received[:cut], received[cut:]
        if lines:
            self._scan(self.tail + lines)
            self.tail = lines[-4:]

    def _scan(self, lines: bytes) -> None:
        if not self.announced:  # the first chunk (retry:) means the subscription is live
            self.announced = True
            self.on_live()
        got = self.got
        if self.timed:  # each pass over the bytes is one in C: the client stays cheap
            times = EVENT_TIMES.findall(lines)
            got.latencies_ms += [time.time_ns() // 1_000_000 - int(t) for t in times]
            events = len(times)
            got.writes += lines.count(CHUNK_BOUNDARY) if events else 0
        else:
            events = lines.count(b"\nid: ")
        if events:
            now = time.monotonic()
            got.events += events
            got.first = got.first or now
            got.last = now
        if b"\n" + END in lines:
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


async def measure(
    url: str,
    subscribers: int,
    iterations: int,
    timed_every: int = 1,
    pace_url: str | None = None,
) -> Measurement:
    host, port = url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=url, timeout=60.0, trust_env=False) as api:
        definition = workload(iterations, pace_url)
        submitted = await api.post("/api/v1/runs", json={"definition": definition})
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
        # (timed subscribers count the writes; subscriber 0 is always one)
        events_per_write=statistics.median(
            r.events / max(r.writes, 1) for r in results if r.latencies_ms
        ),
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
    pace_ms: int = 0,
) -> list[Measurement]:
    """Measurements per subscriber count; with `pace_ms`, of the paced workload (a
    local pace server, allowed through the dev server's SSRF guard, answers each
    tick's GET after `pace_ms`)."""
    async with contextlib.AsyncExitStack() as stack:
        pace_url = None
        env = {}
        if pace_ms:
            server = await stack.enter_async_context(await pace_server(pace_ms))
            port = server.sockets[0].getsockname()[1]
            pace_url = f"http://127.0.0.1:{port}/pace"
            env["AOB_HTTP_ALLOW"] = f"127.0.0.1:{port}"
        base = url or stack.enter_context(dev_server(env))
        await measure(base, 1, 20, pace_url=pace_url)  # warm-up
        return [
            median_of(
                [await measure(base, count, iterations, timed_every, pace_url) for _ in range(reps)]
            )
            for count in subscriber_counts
        ]


def render(results: list[Measurement], iterations: int, reps: int, pace_ms: int = 0) -> str:
    base = next((m for m in results if m.subscribers == 1), results[0])
    paced = f", each tick paced by a {pace_ms} ms outside call" if pace_ms else " (a burst)"
    lines = [
        f"fanout: one run, {iterations} loop iterations{paced}; median of {reps} "
        f"repetitions; ratios to {base.subscribers} subscriber(s)",
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
        "--pace-ms",
        type=int,
        default=10,
        metavar="MS",
        help="also measure the paced run, each tick waiting on an outside call of MS ms "
        "(10; 0: only the burst)",
    )
    parser.add_argument(
        "--url",
        help="a running dev server (AOB_AUTH=off) instead of starting one: to profile it "
        "(the burst only)",
    )
    args = parser.parse_args(argv)
    iterations, reps = (100, 1) if args.quick else (300, 3)
    iterations = args.iterations or iterations
    reps = args.reps or reps
    timed_every = max(args.timed_every, 1)
    burst = asyncio.run(bench(args.subscribers, iterations, reps, args.url, timed_every))
    paced: list[Measurement] = []
    if args.pace_ms > 0 and not args.url:
        paced = asyncio.run(
            bench(args.subscribers, iterations, reps, None, timed_every, args.pace_ms)
        )
    if args.json:
        report = {
            "iterations": iterations,
            "reps": reps,
            "results": [asdict(m) for m in burst],
            "pace_ms": args.pace_ms,
            "paced": [asdict(m) for m in paced],
        }
        print(json.dumps(report, indent=2))
    else:
        print(render(burst, iterations, reps))
        if paced:
            print()
            print(render(paced, iterations, reps, args.pace_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
