"""bench/ratelimit.py runs and reports every store against its baseline."""

from __future__ import annotations

from bench.ratelimit import measure


async def test_the_bench_measures_every_store() -> None:
    results = await measure(admissions=40, concurrency=4)
    assert set(results) == {"memory (baseline)", "sqlite", "postgres"}
    assert results["memory (baseline)"]["latency_ratio"] == 1.0
    for figures in results.values():
        assert figures["latency_ms"] > 0
        assert figures["per_s"] > 0
