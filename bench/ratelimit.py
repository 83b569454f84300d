"""What the rate limiter costs a submission: admissions/s and per-admission latency.

    python -m bench.ratelimit [--admissions N] [--concurrency C] [--json]

Three stores admit the same sequence (one tenant, simple tier, a limit high enough
that every request passes): the pure GCRA over a dict (the baseline: the arithmetic
alone), the embedded SQLite store (BEGIN IMMEDIATE per admission) and PostgreSQL
(INSERT .. ON CONFLICT, SELECT .. FOR UPDATE, UPDATE in one transaction, on a
throwaway local server). Reported per store: the median latency of one admission
when alone, the median throughput of C concurrent admitters (one row, so they
queue on its lock: the worst case), and the ratio of each median to the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aob.infra.postgres import PostgresServer
from aob.platform.ratelimit import (
    Decision,
    PostgresLimiterStore,
    Rule,
    SqliteLimiterStore,
    gcra,
)

RULE = Rule(per_minute=10_000_000, burst=10_000_000)


class MemoryStore:
    """The baseline: GCRA state in a dict, no I/O."""

    def __init__(self) -> None:
        self.tats: dict[tuple[str, str], float] = {}

    async def admit(
        self, tenant: str, tier: str, rule: Rule, now_ms: float | None = None
    ) -> Decision:
        decision = gcra(self.tats.get((tenant, tier)), time.time() * 1000, rule)
        self.tats[tenant, tier] = decision.tat_ms
        return decision

    async def close(self) -> None:
        pass


async def latencies(store: Any, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        decision = await store.admit("bench", "simple", RULE)
        times.append(time.perf_counter() - start)
        assert decision.allowed
    return times


async def throughput(store: Any, count: int, concurrency: int) -> float:
    async def admitter(n: int) -> None:
        for _ in range(n):
            await store.admit("bench", "simple", RULE)

    start = time.perf_counter()
    await asyncio.gather(*(admitter(count // concurrency) for _ in range(concurrency)))
    return (count // concurrency * concurrency) / (time.perf_counter() - start)


@contextlib.asynccontextmanager
async def stores(directory: Path) -> AsyncIterator[dict[str, Callable[[], Any]]]:
    server = PostgresServer.start(fsync=False)
    try:
        yield {
            "memory (baseline)": lambda: _ready(MemoryStore()),
            "sqlite": lambda: SqliteLimiterStore.open(directory / "platform.db"),
            "postgres": lambda: PostgresLimiterStore.open(server.dsn, max_size=16),
        }
    finally:
        server.stop()


async def _ready(store: MemoryStore) -> MemoryStore:
    return store


async def measure(admissions: int, concurrency: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        async with stores(Path(directory)) as factories:
            for name, open_store in factories.items():
                store = await open_store()
                try:
                    await latencies(store, 50)  # warm up
                    alone = statistics.median(await latencies(store, admissions))
                    rates = [await throughput(store, admissions, concurrency) for _ in range(3)]
                    results[name] = {"latency_ms": alone * 1000, "per_s": statistics.median(rates)}
                finally:
                    await store.close()
    base = results["memory (baseline)"]
    for figures in results.values():
        figures["latency_ratio"] = figures["latency_ms"] / base["latency_ms"]
        figures["throughput_ratio"] = figures["per_s"] / base["per_s"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admissions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(measure(args.admissions, args.concurrency))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'store':<20}{'latency ms':>12}{'x base':>10}{'admits/s':>12}{'x base':>10}")
    for name, f in results.items():
        print(
            f"{name:<20}{f['latency_ms']:>12.3f}{f['latency_ratio']:>10.1f}"
            f"{f['per_s']:>12.0f}{f['throughput_ratio']:>10.3f}"
        )
    print(
        f"(median of {args.admissions} admissions alone; {args.concurrency} concurrent admitters)"
    )


if __name__ == "__main__":
    main()
