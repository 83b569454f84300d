"""Issue 11, regexes: `regex_extract` backtracked exponentially (`(a+)+$` over 40
characters did not finish in 30 s), and jq's own `test()` (Oniguruma) backtracks too.
Against a live server, embedded and on Kafka + PostgreSQL, the same isolation checks as
the jq attacks: a tenant's regex costs time linear in its text, or fails on a budget."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.adversarial.capture import CaptureServer
from tests.adversarial.conftest import JQ_SETTINGS, LiveServer, attack

pytestmark = pytest.mark.slow

EVIL = "(a+)+$"
TEXT = "a" * 40 + "!"  # no match: a backtracking engine tries 2^40 ways first


def agent_running_regex(capture: CaptureServer, pattern: str, text: str) -> dict[str, Any]:
    """An agent node whose (scripted) model runs a pipeline with `regex_extract`."""
    marker = f"regex-{uuid.uuid4().hex[:8]}"
    pipeline = {"steps": [{"op": "regex_extract", "pattern": pattern}], "input": text}
    capture.converse(
        marker,
        {"tool_calls": [{"name": "execute_pipeline", "arguments": pipeline}]},
        {"content": "done"},
    )
    return {
        "name": "regex-agent",
        "nodes": [
            {
                "id": "agent",
                "type": "agent",
                "config": {"prompt": f"{marker}: extract", "tools": ["execute_pipeline"]},
            }
        ],
        "output": ".nodes.agent",
    }


def tool_results(capture: CaptureServer, marker_in: str) -> list[str]:
    """What the agent sent back to its model as tool results, for prompts with the
    marker."""
    results = []
    for request in capture.llm.requests:
        messages = request["messages"]
        if any(marker_in in str(m.get("content")) for m in messages):
            results += [str(m["content"]) for m in messages if m.get("role") == "tool"]
    return results


def test_regex_extract_of_a_backtracking_pattern_is_linear(
    server: LiveServer, capture: CaptureServer
) -> None:
    definition = agent_running_regex(capture, EVIL, TEXT)
    marker = definition["nodes"][0]["config"]["prompt"].split(":")[0]
    outcome = attack(server, definition, expect="completed", bad_timeout=20)
    results = tool_results(capture, marker)
    assert results, "the model never got the pipeline's result"
    assert '"result": null' in results[0] or '"result":null' in results[0], results[0]
    output = outcome.bad["output"]
    assert (output.get("answer") if isinstance(output, dict) else output) == "done", output


def test_regex_extract_refuses_what_needs_backtracking_clearly(
    server: LiveServer, capture: CaptureServer
) -> None:
    """A backreference cannot run in linear time: the step fails with a reason the
    model can act on, the node itself does not hang."""
    definition = agent_running_regex(capture, r"(a+)\1+$", TEXT)
    marker = definition["nodes"][0]["config"]["prompt"].split(":")[0]
    attack(server, definition, expect="completed", bad_timeout=20)
    results = tool_results(capture, marker)
    assert results, "the model never got the pipeline's result"
    assert "error" in results[0], results[0]
    assert "RE2" in results[0], results[0]


def jq_test(pattern: str) -> dict[str, Any]:
    return {
        "name": "regex-jq",
        "nodes": [
            {
                "id": "bad",
                "type": "transform",
                "config": {"expr": f".inputs.s | test({json.dumps(pattern)})"},
            }
        ],
        "output": ".nodes.bad",
    }


# jq's regex engine (Oniguruma) bounds a match by its own retry limit, deterministic
# (a count, not a clock): failing on it, or on the CPU budget first, both name a limit.
REGEX_LIMITS = (*JQ_SETTINGS, "retry-limit")


def test_a_backtracking_jq_test_fails_on_a_limit(server: LiveServer) -> None:
    attack(server, jq_test(EVIL), {"s": TEXT}, settings=REGEX_LIMITS)
