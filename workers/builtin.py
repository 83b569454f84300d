"""Node types that need no outside world: `transform` (jq) and `noop`."""

from __future__ import annotations

from typing import Any

from aob.events.types import NodeScheduled
from aob.projections.workflow.expressions import ExpressionError
from aob.workers.host import NodeError, NodeType
from aob.workers.sandbox import JqSandboxBusy, jq_all, jq_first


async def run_transform(task: NodeScheduled) -> Any:
    """`config.expr` is a jq program over the node's input context.

    Its first output is the node's output; with `config.all: true`, the list of all
    outputs. It runs in the jq sandbox: jq errors and exceeded budgets (the reason names
    the budget) fail the node without retries, running it again can't help; an
    overloaded sandbox is retried.
    """
    expr = task.config.get("expr") if isinstance(task.config, dict) else None
    if not isinstance(expr, str):
        raise NodeError(
            "transform node needs a string config.expr (a jq program)",
            retryable=False,
            not_retried="the node's config is invalid",
        )
    try:
        if task.config.get("all"):
            return await jq_all(expr, task.input)
        return await jq_first(expr, task.input)
    except JqSandboxBusy as error:
        raise NodeError(f"jq: {error}") from error
    except ExpressionError as error:
        why = "jq errors are deterministic: the same program fails the same input again"
        raise NodeError(f"jq: {error}", retryable=False, not_retried=why) from error


async def run_noop(task: NodeScheduled) -> Any:
    """Does nothing; outputs `config.output` (null by default)."""
    return task.config.get("output") if isinstance(task.config, dict) else None


BUILTIN_TYPES = (
    NodeType("transform", run_transform, announce_start=False),
    NodeType("noop", run_noop, announce_start=False),
)
# Valid in definitions; executed by the workers of their own services.
WORKER_TYPES = ("http", "hitl", "agent")
