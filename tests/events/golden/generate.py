"""Write events.json: golden Avro bytes that pin the event wire format.

Run by hand, and only when the wire format is meant to change:

    .venv/bin/python tests/events/golden/generate.py --force

Before regenerating for a schema change, save the old envelope schema under
events/schemas/history/ (see aob.events.codec) so records already in logs stay
readable. test_codec.py checks that encode() still produces these exact bytes and
that decode() turns them back into the recorded events.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from aob.events.codec import encode
from aob.events.types import (
    AgentUsageRecorded,
    ApprovalDecided,
    ApprovalEscalated,
    ApprovalRequested,
    ApprovalVoted,
    Event,
    ExpressionEvaluated,
    ExpressionRequested,
    LoopExhausted,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    PatchApplied,
    PatchProposed,
    PatchRejected,
    PatchReviewed,
    PatchReviewRequested,
    RecordDeadLettered,
    RunCancelled,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    RunSubmitted,
    SignalReceived,
    TagMoved,
    TagMoveRequested,
    TimerFired,
    TimerSet,
    ToolRegistered,
    WorkflowCreated,
    WorkflowCreateRequested,
    WorkflowRequestRefused,
)

GOLDEN = Path(__file__).with_name("events.json")

_T = 1_700_000_000_123  # epoch ms
_DEFINITION = {
    "name": "triage",
    "nodes": [{"id": "fetch", "type": "http", "config": {"url": "https://example.test/é"}}],
    "edges": [],
}


def _event(n: int, payload: Any, key: str = "run-1", **envelope: Any) -> Event:
    return Event(event_id=f"evt-{n:04d}", key=key, occurred_at=_T + n, payload=payload, **envelope)


def samples() -> dict[str, Event]:
    """At least one event per payload type; `.defaults` variants leave defaults alone."""
    return {
        "WorkflowCreated": _event(
            1, WorkflowCreated("wf-1", 3, _DEFINITION, tenant="acme"), key="wf-1", actor="alice"
        ),
        "TagMoved": _event(
            2,
            TagMoved(
                "prod", "wf-1", 3, previous_workflow_id="wf-1", previous_version=2, tenant="acme"
            ),
            key="prod",
            trace_id="trace-a",
        ),
        "TagMoved.defaults": _event(3, TagMoved("dev", "wf-1", 1), key="dev"),
        "RunSubmitted": _event(
            4,
            RunSubmitted(
                "run-1",
                _DEFINITION,
                {"query": "naïve café ☕", "limit": 10, "ratio": 0.25, "tags": None},
                ["http", "llm"],
                workflow_id="wf-1",
                version=3,
                tag="prod",
                checkpoint={"run_id": "run-0", "from_event": 7, "outputs": {"fetch": [1, 2]}},
                tenant="acme",
            ),
            trace_id="trace-1",
            actor="api:bob",
        ),
        "RunSubmitted.defaults": _event(5, RunSubmitted("run-2", {}, None, []), key="run-2"),
        "NodeScheduled": _event(
            6,
            NodeScheduled(
                "run-1",
                "fetch",
                "http",
                0,
                1,
                {"url": "https://example.test/é"},
                {"inputs": {"q": 1}, "nodes": {}, "iteration": 0},
                timeout_ms=30_000,
            ),
            trace_id="trace-1",
            causation_id="evt-0004",
        ),
        "NodeStarted": _event(7, NodeStarted("run-1", "fetch", 0, 1, "worker-7")),
        "NodeCompleted": _event(
            8,
            NodeCompleted(
                "run-1", "fetch", 0, 1, {"status": 200, "body": ["日本語", {"ok": True}]}
            ),
            causation_id="evt-0007",
        ),
        "NodeFailed": _event(
            9,
            NodeFailed(
                "run-1",
                "fetch",
                0,
                2,
                "HTTP 404",
                retryable=False,
                not_retried="HTTP 404 is not transient",
            ),
        ),
        "NodeFailed.defaults": _event(10, NodeFailed("run-1", "fetch", 0, 1, "timeout")),
        "NodeSkipped": _event(11, NodeSkipped("run-1", "mystery", 0, "unknown type", warning=True)),
        "TimerSet": _event(12, TimerSet("run-1", "tmr-1", 2**53 + 1, "retry", "fetch", 0, 2)),
        "TimerFired": _event(13, TimerFired("run-1", "tmr-1")),
        "PatchProposed": _event(
            14,
            PatchProposed(
                "run-1",
                "p-1",
                [{"op": "add", "path": "/nodes/-", "value": {"id": "x", "type": "llm"}}],
                reason="agent wants a summary",
            ),
            actor="agent:planner",
        ),
        "PatchApplied": _event(15, PatchApplied("run-1", "p-1", 2, added_nodes=["x", "y"])),
        "PatchApplied.defaults": _event(16, PatchApplied("run-1", "p-2", 3)),
        "PatchRejected": _event(17, PatchRejected("run-1", "p-3", ["cycle: x -> x", ""])),
        "ApprovalRequested": _event(
            18,
            ApprovalRequested(
                "run-1",
                "apr-1",
                "gate",
                0,
                "Ship it? 🚀",
                payload={"diff": "+1 -0", "nested": {"deep": [[], {}]}},
                approvers=["alice", "bob"],
                deadline=_T + 86_400_000,
            ),
        ),
        "ApprovalRequested.defaults": _event(
            19, ApprovalRequested("run-1", "apr-2", "gate", 1, "")
        ),
        "ApprovalDecided": _event(
            20, ApprovalDecided("run-1", "apr-1", "approved", "alice", comments="lgtm")
        ),
        "RunCancelRequested": _event(21, RunCancelRequested("run-1", reason="user asked")),
        "RunCompleted": _event(22, RunCompleted("run-1", {"answer": 42, "pi": 3.14159})),
        "RunFailed": _event(23, RunFailed("run-3", "boom", node_id="fetch"), key="run-3"),
        "RunFailed.defaults": _event(24, RunFailed("run-4", "no node"), key="run-4"),
        "RunCancelled": _event(25, RunCancelled("run-1")),
        "PatchProposed.agent": _event(
            26,
            PatchProposed("run-1", "p-4", [{"op": "remove", "path": "/edges/0"}], node_id="plan"),
            actor="agent:plan",
        ),
        "PatchReviewRequested": _event(27, PatchReviewRequested("run-1", "p-4")),
        "PatchReviewed": _event(
            28, PatchReviewed("run-1", "p-4", "reject", "carol", reason="too broad"), actor="carol"
        ),
        "PatchReviewed.defaults": _event(29, PatchReviewed("run-1", "p-5", "approve", "dave")),
        "AgentUsageRecorded": _event(
            30,
            AgentUsageRecorded(
                "run-1",
                "plan",
                0,
                1,
                "gpt-x",
                3,
                1200,
                80,
                1280,
                cached_tokens=1024,
                tool_calls=2,
                outcome="failed",
                calls=[
                    {
                        "name": "search_tools",
                        "arguments": '{"query": "crm"}',
                        "result": '{"results": []}',
                        "elapsed_ms": 1.5,
                    },
                    {"name": "patch_workflow", "arguments": "{}", "result": "{}", "elapsed_ms": 12},
                ],
                tenant="acme",
                cost_nano_usd=228_000,
                price={"input": 0.15, "output": 0.6, "cached_input": 0.075},
            ),
        ),
        "AgentUsageRecorded.defaults": _event(
            31, AgentUsageRecorded("run-1", "plan", 1, 1, "m", 1, 10, 2, 12)
        ),
        "ToolRegistered": _event(
            32,
            ToolRegistered(
                "top-sellers",
                "pipeline",
                {"steps": [{"op": "top_k", "k": 3}], "parameters": {"type": "object"}},
                description="The three best sellers",
                tenant="acme",
            ),
            key="top-sellers",
        ),
        "ToolRegistered.defaults": _event(
            33, ToolRegistered("petstore", "openapi", {"openapi": "3.0.0"}), key="petstore"
        ),
        "NodeScheduled.refs": _event(
            34,
            NodeScheduled(
                "run-1",
                "summary",
                "transform",
                1,
                1,
                {"expr": ".nodes.big | length"},
                {"inputs": {}, "nodes": {"big": None}, "iteration": 0},
                output_refs={"big": "sha256:" + "ab" * 32},
                tenant="acme",
            ),
        ),
        "NodeCompleted.ref": _event(
            35, NodeCompleted("run-1", "big", 0, 1, None, output_ref="sha256:" + "ab" * 32)
        ),
        "RunCompleted.ref": _event(36, RunCompleted("run-1", None, "sha256:" + "cd" * 32)),
        "PatchProposed.instance": _event(
            37,
            PatchProposed(
                "run-1", "patch-2", [], "more", node_id="planner", iteration=0, attempt=2
            ),
        ),
        "ExpressionRequested": _event(
            38,
            ExpressionRequested(
                "run-1",
                "run-1:edge:a->b:0",
                "edge",
                ".nodes.a > 2",
                {"inputs": {}, "nodes": {"a": 3}, "iteration": 0},
                {},
                "a",
                "b",
                0,
                "acme",
            ),
        ),
        "ExpressionEvaluated": _event(39, ExpressionEvaluated("run-1", "run-1:edge:a->b:0", True)),
        "ExpressionEvaluated.error": _event(
            40,
            ExpressionEvaluated(
                "run-1", "run-1:output", error="jq CPU budget exceeded (250 ms, AOB_JQ_CPU_MS)"
            ),
        ),
        "RecordDeadLettered": _event(
            41,
            RecordDeadLettered(
                "aob-coordinator", "aob.runs", 3, 1207, "run-1", b"\xc3\x01garbage", "bad", "run-1"
            ),
        ),
        "WorkflowCreateRequested": _event(
            42,
            WorkflowCreateRequested("wf-1", _DEFINITION, tag="prod", tenant="acme"),
            key="wf-1",
            actor="alice",
        ),
        "WorkflowCreateRequested.defaults": _event(
            43, WorkflowCreateRequested("wf-2", {"name": "wf-2"}), key="wf-2"
        ),
        "TagMoveRequested": _event(
            44,
            TagMoveRequested("prod", "wf-1", 4, tenant="acme"),
            key="prod",
            causation_id="evt-0042",
        ),
        "TagMoveRequested.defaults": _event(45, TagMoveRequested("dev", "wf-1", 1), key="dev"),
        "WorkflowRequestRefused": _event(
            46,
            WorkflowRequestRefused("evt-0044", "name-taken", "tag", "prod"),
            key="prod",
            causation_id="evt-0044",
        ),
        "LoopExhausted": _event(47, LoopExhausted("run-1", "tick", "tick", 3, failed=True)),
        "LoopExhausted.defaults": _event(48, LoopExhausted("run-1", "tick", "start", 10)),
        "ApprovalVoted": _event(
            49, ApprovalVoted("run-1", "apr-1", "approve", "bob", "ok"), actor="bob"
        ),
        "ApprovalEscalated": _event(
            50, ApprovalEscalated("run-1", "apr-1", 1, ["carol", "role:cfo"], _T + 60_000)
        ),
        "SignalReceived": _event(
            51, SignalReceived("run-1", "paid", {"amount": 12}, "dave"), actor="dave"
        ),
        "ApprovalDecided.quorum": _event(
            52,
            ApprovalDecided(
                "run-1",
                "apr-1",
                "approve",
                "system:quorum",
                votes=[{"voter": "bob", "decision": "approve", "comments": "", "at": _T}],
                signal={"name": "paid", "payload": 1},
            ),
        ),
    }


def _plain(value: Any) -> Any:
    """JSON for a payload field: bytes as {"hex": ...}."""
    return {"hex": value.hex()} if isinstance(value, bytes) else value


def event_to_json(event: Event) -> dict[str, Any]:
    payload = event.payload
    return {
        "event_id": event.event_id,
        "key": event.key,
        "occurred_at": event.occurred_at,
        "trace_id": event.trace_id,
        "causation_id": event.causation_id,
        "actor": event.actor,
        "type": event.type,
        "payload": {f.name: _plain(getattr(payload, f.name)) for f in dataclasses.fields(payload)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    if GOLDEN.exists() and not args.force:
        print(f"{GOLDEN} exists; pass --force to change the pinned wire format", file=sys.stderr)
        return 1
    vectors = {
        name: {"hex": encode(event).hex(), "event": event_to_json(event)}
        for name, event in samples().items()
    }
    GOLDEN.write_text(json.dumps(vectors, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(vectors)} vectors to {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
