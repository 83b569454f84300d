"""What a hitl task asks of people: the approval request, rendered from the run context.

Functions of the task alone (placeholders run in the jq sandbox); the service appends
what they return.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from aob.events.types import ApprovalRequested, Json, NodeScheduled
from aob.projections.workflow.expressions import ExpressionError
from aob.workers.sandbox import jq_first

# Roles ride in ApprovalRequested.approvers beside the names, marked with this prefix.
ROLE_PREFIX = "role:"


class RenderError(ValueError):
    """A placeholder failed on the run context; the node fails (retrying cannot help)."""


async def approval_request(
    task: NodeScheduled, approval_id: str, requested_at: int
) -> ApprovalRequested:
    """The approval `task` asks for; raises RenderError when its templates fail."""
    config: dict[str, Any] = task.config if isinstance(task.config, dict) else {}
    timeout_ms = config.get("timeout_ms")
    message = config.get("message") or f"Approve {task.node_id}?"
    return ApprovalRequested(
        run_id=task.run_id,
        approval_id=approval_id,
        node_id=task.node_id,
        iteration=task.iteration,
        message=str(await render(message, task.input)),
        payload=await render(config.get("payload"), task.input),
        approvers=deciders(config),
        deadline=None if timeout_ms is None else requested_at + int(timeout_ms),
    )


def deciders(config: dict[str, Any]) -> list[str]:
    """Named approvers as they are, then roles as "role:<name>"."""
    names = [str(n) for n in config.get("approvers", [])]
    return names + [ROLE_PREFIX + str(r) for r in config.get("roles", [])]


async def render(template: Json, context: Json) -> Json:
    """`template` with every string's `{{ jq }}` placeholders filled in from `context`.

    A string that is one placeholder becomes its value (a number stays a number);
    within text, strings go in as they are and other values as compact JSON.
    """
    try:
        return await _render(template, context)
    except RecursionError:
        raise RenderError("the payload nests too deeply to render") from None


async def _render(template: Json, context: Json) -> Json:
    if isinstance(template, str):
        return await _render_text(template, context)
    if isinstance(template, dict):
        return {key: await _render(value, context) for key, value in template.items()}
    if isinstance(template, list):
        return [await _render(value, context) for value in template]
    return template


async def _render_text(text: str, context: Json) -> Json:
    spans = list(placeholder_spans(text))
    if len(spans) == 1 and spans[0] == (0, len(text)):  # the whole string: its value
        return await _value(text[2:-2], context)
    parts: list[str] = []
    end = 0
    for start, stop in spans:
        parts += [text[end:start], _as_text(await _value(text[start + 2 : stop - 2], context))]
        end = stop
    return "".join([*parts, text[end:]])


def placeholder_spans(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each `{{ jq }}` placeholder in `text`, the placeholders that
    `definition.placeholders` validated: from a "{{" to the first "}}" after it. One
    pass of `str.find` (a regex for this rescans the rest of the text from every
    unclosed "{{": quadratic on a hostile message)."""
    start = text.find("{{")
    while start >= 0:
        close = text.find("}}", start + 2)
        if close < 0:
            return
        yield start, close + 2
        start = text.find("{{", close + 2)


async def _value(program: str, context: Json) -> Json:
    try:
        return await jq_first(program, context)
    except ExpressionError as error:
        raise RenderError(f"placeholder {{{{{program}}}}}: {error.message}") from None


def _as_text(value: Json) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
