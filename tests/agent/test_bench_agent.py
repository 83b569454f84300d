"""The agent benchmark runs and reports consistent figures (speed is not asserted)."""

from __future__ import annotations

from bench.agent import run_benchmark


async def test_agent_benchmark_smoke():
    result = await run_benchmark(nodes=2, rounds=1, repetitions=1)
    assert result["runner_decisions_per_s"] > 0
    assert result["runner_overhead_ms"] > 0
    # One decision is the runner's own time plus its LLM round trip.
    assert result["runner_decision_ms"] > result["runner_overhead_ms"]
    assert result["concurrent_decisions_per_s"] > 0
