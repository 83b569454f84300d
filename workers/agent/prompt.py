"""What the model sees: a stable prefix (system prompt and tool schemas), then the node.

Providers cache prompt prefixes (OpenAI from 1024 tokens on): the system prompt and
the five tool schemas are byte-identical for every agent node and every round, and
come first, so every call after the first reuses the cached prefix. Everything
that varies (the node's instructions, its inputs, the workflow) comes after it.
"""

from __future__ import annotations

import json
from typing import Any

from aob.events.types import Json
from aob.workers.agent.pipeline import PRIMITIVES

TOOL_NAMES = (
    "execute_pipeline",
    "patch_workflow",
    "search_tools",
    "openapi_action",
    "delegate_to_agent",
)

SYSTEM_PROMPT = """\
You are an agent node inside an aob workflow run. A workflow is a graph of nodes \
(agents, HTTP calls, human approvals, jq transforms) joined by edges; you are one \
node of a running workflow. Do the task you are given, using tools when they help, \
then answer with a final message (no tool call). Your final message is your node's \
output, which the nodes after you receive.

Tools:
- execute_pipeline: run a pipeline of steps over data (the fast lane; changes \
nothing in the workflow). Each step is {"op": <primitive>, ...}; each step's result \
is the next step's input, the first step gets "input" (default: what your node \
receives, {"inputs": ..., "nodes": ...}). Save a step's result with \
"as": name (join reads saved results). Primitives:
  http_request {url, method?, query?, headers?, body?} -> response body (public hosts only)
  table_sort {by: field or [fields], descending?}
  table_filter {where: jq boolean over a row} or \
{field, cmp: eq|ne|gt|gte|lt|lte|contains|in, value}
  table_select {fields: [names] or {new_name: field}}
  top_k {k, by?, descending?: true}
  groupby {by, aggregations?: {name: {op: count|sum|avg|min|max|list|first, field}}}
  join {with: saved name or rows: [...], on: field or {left, right}, how?: inner|left}
  jq_transform {expr: jq program, all?: false}
  regex_extract {pattern, field?, into?, group?, all?}
  parse_date {field?, into?, format?: strptime format} -> ISO 8601
  Run a registered composite tool with {"tool": name, "input": ...} instead of steps.
  An error names the failing step and why: fix that step and try again.
- patch_workflow: change the running workflow with RFC 6902 JSON Patch operations \
on its definition {"name", "nodes": [...], "edges": [...]} (the patch lane). Add a \
node with {"op": "add", "path": "/nodes/-", "value": {"id": "new-id", "type": \
"transform", "config": {"expr": "..."}}} and connect it with {"op": "add", "path": \
"/edges/-", "value": {"from": "your-node-id", "to": "new-id"}} (when the \
definition has no "edges" array yet, add one: {"op": "add", "path": "/edges", \
"value": [...]}). Nodes that have \
started cannot change, nor their incoming edges; no cycles except declared loops; \
at most 5 agent nodes may be added per run. New nodes run when their inputs are \
done. If the workflow requires review, your patch waits for a person to approve it. \
Rejected patches come back with the problems and a corrected example.
- search_tools: find registered composite tools and OpenAPI operations by keywords.
- openapi_action: call an operation of a registered OpenAPI document by its \
operation id: {"api", "operation_id", "arguments": {parameter: value, ..., "body": ...}}.
- delegate_to_agent: hand a self-contained sub-task to another agent and get its \
answer: {"task", "context"?}. Delegation depth is limited.

Rules: use only the tools the node context lists as available. Keep tool inputs \
small and precise. Never invent data a tool did not return. When you are done, \
reply with the answer only.
"""

_STEP = {
    "type": "object",
    "properties": {"op": {"type": "string", "enum": list(PRIMITIVES)}},
    "required": ["op"],
}
_OPERATION = {
    "type": "object",
    "properties": {
        "op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"]},
        "path": {"type": "string", "description": "JSON Pointer into the definition"},
        "value": {"description": "for add, replace and test"},
        "from": {"type": "string", "description": "for move and copy"},
    },
    "required": ["op", "path"],
}


def _function(
    name: str, description: str, properties: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
            },
        },
    }


TOOLS: list[dict[str, Any]] = [
    _function(
        "execute_pipeline",
        "Run an ephemeral data pipeline (steps over primitives) or a registered composite tool.",
        {
            "steps": {"type": "array", "items": _STEP},
            "tool": {"type": "string", "description": "a registered composite tool's name"},
            "input": {
                "description": "the first step's input (any JSON); default: what "
                "the node receives, {inputs, nodes}"
            },
        },
        [],
    ),
    _function(
        "patch_workflow",
        "Change the running workflow with RFC 6902 JSON Patch operations on its definition.",
        {
            "operations": {"type": "array", "items": _OPERATION, "minItems": 1},
            "reason": {"type": "string", "description": "why, for the people reviewing"},
        },
        ["operations"],
    ),
    _function(
        "search_tools",
        "Find registered composite tools and OpenAPI operations by keywords.",
        {"query": {"type": "string"}},
        ["query"],
    ),
    _function(
        "openapi_action",
        "Call an operation of a registered OpenAPI document by its operation id.",
        {
            "api": {"type": "string", "description": "the registered document's name"},
            "operation_id": {"type": "string"},
            "arguments": {
                "type": "object",
                "description": "parameters by name, and 'body' for the request body",
            },
        },
        ["api", "operation_id"],
    ),
    _function(
        "delegate_to_agent",
        "Hand a self-contained sub-task to another agent and wait for its answer.",
        {
            "task": {"type": "string", "description": "what the other agent must do"},
            "context": {"description": "data it needs (any JSON)"},
        },
        ["task"],
    ),
]


def node_context(
    *,
    run_id: str,
    node_id: str,
    available: list[str],
    inputs: Json,
    definition: Json,
    instructions: str,
) -> str:
    """The node-specific system message that follows the stable prefix."""
    parts = [
        f"Run {run_id}, node {node_id!r} (your node id).",
        f"Available tools: {', '.join(available) if available else 'none'}.",
    ]
    if definition is not None:
        parts.append("The workflow definition as it is now: " + _compact(definition))
    parts.append(
        "What your node receives (run inputs and finished nodes' outputs): " + _compact(inputs)
    )
    if instructions:
        parts.append("Instructions: " + instructions)
    return "\n".join(parts)


def _compact(value: Json, limit: int = 20_000) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…(truncated)"
