"""Agent benchmark: decisions/s of the agent runner against the scripted endpoint.

    python -m bench.agent            # about half a minute on 2 cores
    python -m bench.agent --quick
    python -m bench.agent --json

A decision is one round of an agent: an LLM call, then the runner acting on the
answer (running the tool it called, or finishing). The scripted endpoint
(`aob.workers.agent.demo_llm`) runs in its own process and answers at once; the time
the runner spends awaiting it is measured per call and taken out, so the figures are
the runner's own cost, LLM latency excluded:

- runner: agent nodes run one after another through `AgentRunner.handle` (usage
  events appended to a real SQLite log), each `rounds` tool-call rounds of
  `execute_pipeline` (sort, filter, top_k, jq over 50 rows) and a final answer.
  decisions/s = decisions / (wall time - time awaiting the LLM); overhead per
  decision = (wall time - time awaiting the LLM) / decisions.
- baseline: the runner's very requests (recorded once, then replayed) made with the
  bare SDK, nothing else: its time per call is what any caller of this endpoint pays.
- concurrent: 16 agent nodes at once, end to end (LLM round trips included).

Every figure is the median over repetitions; the ratio runner / baseline is taken
per repetition, then its median reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aob.events.log.sqlite import SqliteEventLog
from aob.events.types import RUNS_TOPIC, TOOLS_TOPIC, NodeScheduled
from aob.workers.agent import AgentDefaults, AgentRunner, AgentServices, LlmClients, ToolCatalog
from aob.workers.agent.llm import Endpoint
from aob.workers.agent.prompt import TOOLS

ROWS = [{"id": i, "team": "abc"[i % 3], "score": (i * 37) % 101} for i in range(50)]
STEPS = [
    {"op": "table_filter", "where": ".score > 20"},
    {"op": "table_sort", "by": "score", "descending": True},
    {"op": "top_k", "k": 5},
    {"op": "jq_transform", "expr": "map(.id)"},
]


def script(rounds: int) -> dict[str, Any]:
    call = {"name": "execute_pipeline", "arguments": {"steps": STEPS, "input": ROWS}}
    turns: list[dict[str, Any]] = [{"tool_calls": [call]} for _ in range(rounds)]
    turns.append({"content": "done"})
    return {"conversations": [{"match": "bench agent", "turns": turns}]}


@contextmanager
def scripted_endpoint(rounds: int) -> Iterator[str]:
    """The scripted endpoint in its own process; yields its base URL."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "script.json"
        path.write_text(json.dumps(script(rounds)))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aob.workers.agent.demo_llm",
                "--port",
                str(port),
                "--script",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            process.terminate()
            process.wait(10)


def _wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the scripted endpoint did not start")


def task(n: int) -> NodeScheduled:
    return NodeScheduled(
        f"run-{n}",
        "agent",
        "agent",
        0,
        1,
        {"prompt": "bench agent", "tools": ["execute_pipeline"]},
        {"inputs": {}, "nodes": {}, "iteration": 0},
    )


async def measure_runner(
    base_url: str, nodes: int, concurrency: int, log_dir: Path
) -> dict[str, float]:
    log = await SqliteEventLog.open(log_dir / f"log-{time.monotonic_ns()}.db")
    await log.create_topic(RUNS_TOPIC, 8)
    await log.create_topic(TOOLS_TOPIC, 1)
    defaults = AgentDefaults(base_url=base_url, model="bench", max_rounds=100, max_retries=0)
    runner = AgentRunner(AgentServices(log, defaults, ToolCatalog()), clients=LlmClients())
    try:
        await runner.handle(task(-1))  # warm up: connection, jq programs
        runner.llm_seconds, runner.decisions = 0.0, 0
        gate = asyncio.Semaphore(concurrency)

        async def one(n: int) -> None:
            async with gate:
                await runner.handle(task(n))

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(nodes)))
        wall = time.perf_counter() - started
    finally:
        await runner.aclose()
        await log.close()
    return {"wall": wall, "llm": runner.llm_seconds, "decisions": runner.decisions}


class RecordingClients(LlmClients):
    """Keeps the messages of every call, to replay them with the bare SDK."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[dict[str, Any]]] = []

    async def complete(
        self,
        endpoint: Endpoint,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        **options: Any,
    ) -> Any:
        self.calls.append(list(messages))
        return await super().complete(endpoint, messages, tools, **options)


async def record_conversation(base_url: str, log_dir: Path) -> list[list[dict[str, Any]]]:
    """The requests one agent node makes (recorded, not timed)."""
    log = await SqliteEventLog.open(log_dir / "record.db")
    await log.create_topic(RUNS_TOPIC, 8)
    clients = RecordingClients()
    defaults = AgentDefaults(base_url=base_url, model="bench", max_rounds=100, max_retries=0)
    runner = AgentRunner(AgentServices(log, defaults, ToolCatalog()), clients=clients)
    try:
        await runner.handle(task(0))
    finally:
        await runner.aclose()
        await log.close()
    return clients.calls


async def measure_sdk(
    base_url: str, nodes: int, conversation: list[list[dict[str, Any]]]
) -> dict[str, float]:
    """The runner's very requests, replayed with the bare SDK and nothing else."""
    clients = LlmClients()
    endpoint = Endpoint(base_url, "bench", "", max_retries=0)
    try:
        for messages in conversation:  # warm up
            await clients.complete(endpoint, messages, TOOLS)
        started = time.perf_counter()
        for _ in range(nodes):
            for messages in conversation:
                await clients.complete(endpoint, messages, TOOLS)
        wall = time.perf_counter() - started
    finally:
        await clients.aclose()
    return {"wall": wall, "decisions": nodes * len(conversation)}


async def run_benchmark(nodes: int, rounds: int, repetitions: int) -> dict[str, Any]:
    rows: dict[str, list[float]] = {
        k: []
        for k in (
            "runner_decisions_per_s",
            "runner_overhead_ms",
            "sdk_call_ms",
            "runner_decision_ms",
            "ratio_decision_vs_sdk_call",
            "concurrent_decisions_per_s",
        )
    }
    with scripted_endpoint(rounds) as base_url, tempfile.TemporaryDirectory() as tmp:
        conversation = await record_conversation(base_url, Path(tmp))
        for _ in range(repetitions):
            sdk = await measure_sdk(base_url, nodes, conversation)
            runner = await measure_runner(base_url, nodes, 1, Path(tmp))
            concurrent = await measure_runner(base_url, nodes, 16, Path(tmp))
            own = runner["wall"] - runner["llm"]
            sdk_call = sdk["wall"] / sdk["decisions"]
            decision = runner["wall"] / runner["decisions"]
            rows["runner_decisions_per_s"].append(runner["decisions"] / own)
            rows["runner_overhead_ms"].append(own / runner["decisions"] * 1000)
            rows["sdk_call_ms"].append(sdk_call * 1000)
            rows["runner_decision_ms"].append(decision * 1000)
            rows["ratio_decision_vs_sdk_call"].append(decision / sdk_call)
            rows["concurrent_decisions_per_s"].append(concurrent["decisions"] / concurrent["wall"])
    return {
        "nodes": nodes,
        "rounds_per_node": rounds,
        "repetitions": repetitions,
        "cpus": os.cpu_count(),
        **{name: round(statistics.median(values), 3) for name, values in rows.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer nodes and repetitions")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    nodes, repetitions = (10, 3) if args.quick else (40, 5)
    result = asyncio.run(run_benchmark(nodes, rounds=4, repetitions=repetitions))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"agent runner, {nodes} nodes x {result['rounds_per_node']} tool rounds + answer, "
        f"median of {repetitions} (cpus: {result['cpus']})"
    )
    lines = [
        ("runner decisions/s, LLM latency excluded", f"{result['runner_decisions_per_s']:.1f}"),
        ("runner overhead per decision (ms)", f"{result['runner_overhead_ms']:.3f}"),
        ("bare SDK call to the endpoint (ms)", f"{result['sdk_call_ms']:.3f}"),
        ("runner decision incl. LLM round trip (ms)", f"{result['runner_decision_ms']:.3f}"),
        ("ratio decision / bare SDK call", f"{result['ratio_decision_vs_sdk_call']:.2f}"),
        ("16 concurrent agents, decisions/s e2e", f"{result['concurrent_decisions_per_s']:.1f}"),
    ]
    for label, value in lines:
        print(f"  {label:<44}{value:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
