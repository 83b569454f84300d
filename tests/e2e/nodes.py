"""Node types the end-to-end conformance suite runs besides the built-ins.

They run in a worker the suite starts itself, beside whichever backend is under
test, and record every execution in a sink: counting at the side effect, not in the
coordinator's memory, is what proves a node ran exactly once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aob.events.types import NodeScheduled
from aob.workers.host import NodeError, NodeType


class ExecutionSink:
    """Every (run, node, iteration, attempt) a test worker executed, with counts."""

    def __init__(self) -> None:
        self.executions: Counter[tuple[str, str, int, int]] = Counter()
        self._gates: dict[tuple[str, str], asyncio.Event] = {}

    def record(self, task: NodeScheduled) -> None:
        self.executions[(task.run_id, task.node_id, task.iteration, task.attempt)] += 1

    def of_run(self, run_id: str) -> dict[tuple[str, int, int], int]:
        return {k[1:]: n for k, n in self.executions.items() if k[0] == run_id}

    def gate(self, run_id: str, node_id: str) -> asyncio.Event:
        """What the `gate` node `node_id` of `run_id` waits for: set it to let it end."""
        return self._gates.setdefault((run_id, node_id), asyncio.Event())

    def open(self, run_id: str, node_id: str) -> None:
        self.gate(run_id, node_id).set()


def conformance_node_types(sink: ExecutionSink) -> list[NodeType]:
    """`flaky` fails its first `config.fail_attempts` attempts; `sleep` waits `config.ms`;
    `gate` runs until the test opens it (`sink.open`): a node seen running stays so, on
    a machine however loaded (a short sleep may end before a slow read model shows it)."""

    async def flaky(task: NodeScheduled) -> Any:
        sink.record(task)
        if task.attempt <= int(task.config.get("fail_attempts", 0)):
            raise NodeError(f"planned failure of attempt {task.attempt}")
        return {"attempt": task.attempt}

    async def sleep(task: NodeScheduled) -> Any:
        sink.record(task)
        await asyncio.sleep(int(task.config.get("ms", 0)) / 1000)
        return {"slept_ms": task.config.get("ms", 0)}

    async def gate(task: NodeScheduled) -> Any:
        sink.record(task)
        await sink.gate(task.run_id, task.node_id).wait()
        return {"opened": True}

    return [
        NodeType("flaky", flaky),
        NodeType("sleep", sleep, concurrency=64),
        NodeType("gate", gate, concurrency=64),
    ]


TEST_NODE_TYPES = ["flaky", "sleep", "gate"]
