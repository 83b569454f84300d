"""What the jq sandbox costs an evaluation: the same small transform in process and
through the sandbox, in one invocation.

    python -m bench.sandbox [--evaluations N] [--concurrency C] [--json]

Reported: the median per-evaluation latency of the in-process `expressions.evaluate`
(the old way: libjq on the event loop, holding the GIL) and of `JqSandbox.first` (a
pipe round trip to a child process), each the median of several rounds, their ratio,
and the sandbox's throughput with C evaluations in flight over the default 2 children.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from aob.projections.workflow.expressions import evaluate
from aob.workers.sandbox import JqSandbox, SandboxSettings

# A typical transform node: reshape upstream output from the run context.
PROGRAM = "[.inputs.orders[] | {id, amount: (.amount | tonumber)}] | map(select(.amount > 5))"
CONTEXT = {
    "inputs": {"orders": [{"id": f"o{i}", "amount": str(i * 1.5)} for i in range(10)]},
    "nodes": {"fetch": {"status": 200, "body": {"ok": True}}},
    "iteration": 0,
}
ROUNDS = 5


def _in_process(n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        evaluate(PROGRAM, CONTEXT)
    return (time.perf_counter() - started) / n


async def _sandboxed(pool: JqSandbox, n: int) -> tuple[float, float]:
    """Wall time per evaluation, and this (the parent) process's CPU time per evaluation."""
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await pool.first(PROGRAM, CONTEXT)
    return (time.perf_counter() - started) / n, (time.process_time() - cpu) / n


async def _throughput(pool: JqSandbox, n: int, concurrency: int) -> float:
    async def worker(count: int) -> None:
        for _ in range(count):
            await pool.first(PROGRAM, CONTEXT)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return (n // concurrency) * concurrency / (time.perf_counter() - started)


async def measure(n: int, concurrency: int) -> dict[str, Any]:
    pool = JqSandbox(SandboxSettings())
    await pool.start()
    try:
        assert await pool.first(PROGRAM, CONTEXT) == evaluate(PROGRAM, CONTEXT)
        _in_process(n // 10)  # warm both: compile caches, children's caches
        await _sandboxed(pool, n // 10)
        local = statistics.median(_in_process(n) for _ in range(ROUNDS))
        rounds = [await _sandboxed(pool, n) for _ in range(ROUNDS)]
        remote = statistics.median(wall for wall, _ in rounds)
        parent_cpu = statistics.median(cpu for _, cpu in rounds)
        rate = statistics.median([await _throughput(pool, n, concurrency) for _ in range(ROUNDS)])
    finally:
        await pool.close()
    return {
        "evaluations_per_round": n,
        "rounds": ROUNDS,
        "in_process_us": local * 1e6,
        "sandbox_us": remote * 1e6,
        "sandbox_parent_cpu_us": parent_cpu * 1e6,
        "ratio": remote / local,
        "concurrency": concurrency,
        "sandbox_evaluations_per_s": rate,
        "workers": pool.settings.workers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox", description=__doc__)
    parser.add_argument("--evaluations", type=int, default=2000, help="per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.evaluations, args.concurrency))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"program: {PROGRAM}")
    print(f"in-process expressions.evaluate: {result['in_process_us']:8.1f} us/evaluation")
    print(f"sandbox (JqSandbox.first):       {result['sandbox_us']:8.1f} us/evaluation")
    print(f"  of which the parent's CPU:     {result['sandbox_parent_cpu_us']:8.1f} us/evaluation")
    print(f"ratio sandbox / in-process:      {result['ratio']:8.2f}x")
    print(
        f"sandbox throughput, {result['concurrency']} in flight over {result['workers']}"
        f" children: {result['sandbox_evaluations_per_s']:,.0f} evaluations/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
