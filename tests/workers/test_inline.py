"""What the coordinator may decide in process (`aob.workers.inline.InlineWork`).

It answers only what the sandbox's fast path vouches for, with the very events its
worker or the expression evaluator would append (same ids, payloads and actors), and
leaves everything else to them: their messages and budgets stay the ones users see.
"""

from __future__ import annotations

from typing import Any

import pytest

from aob.events.ids import derived_event_id
from aob.events.types import (
    Event,
    ExpressionEvaluated,
    ExpressionRequested,
    NodeCompleted,
    NodeScheduled,
    NodeStarted,
    Payload,
)
from aob.workers.builtin import run_transform
from aob.workers.inline import InlineWork
from aob.workers.sandbox import SandboxSettings

INLINE_MAX_BYTES = 1024
WORK = InlineWork(SandboxSettings(), INLINE_MAX_BYTES, clock=lambda: 42)
CONTEXT = {"inputs": {"x": 3, "name": "ada"}, "nodes": {"a": 4}, "iteration": 0}


def event(payload: Payload) -> Event:
    return Event("cause-id", "run-1", 7, payload, trace_id="trace-1", actor="coordinator")


def task(node_type: str = "transform", **extra: Any) -> NodeScheduled:
    fields: dict[str, Any] = {"config": {"expr": ".nodes.a * 2"}, "input": CONTEXT, **extra}
    return NodeScheduled("run-1", "b", node_type, 2, 1, **fields)


def request(program: str, purpose: str = "edge", **extra: Any) -> ExpressionRequested:
    fields: dict[str, Any] = {"input": CONTEXT, **extra}
    return ExpressionRequested("run-1", "req-1", purpose, program, **fields)


def test_a_simple_transform_is_answered_as_its_worker_would() -> None:
    answers = WORK(event(task()))
    assert answers is not None
    started, completed = answers
    assert started.payload == NodeStarted("run-1", "b", 2, 1, "inline")
    assert completed.payload == NodeCompleted("run-1", "b", 2, 1, 8)
    # The worker's ids (derived from the task's), so the fold treats either as one outcome.
    assert started.event_id == derived_event_id("cause-id", "started")
    assert completed.event_id == derived_event_id("cause-id", "outcome")
    for answer in answers:
        assert (answer.key, answer.trace_id) == ("run-1", "trace-1")
        assert answer.causation_id == "cause-id"
        assert (answer.actor, answer.occurred_at) == ("worker:inline", 42)


async def test_the_output_is_the_workers_output() -> None:
    for config in (
        {"expr": ".inputs.x + .nodes.a"},
        {"expr": "{name: .inputs.name, twice: (.nodes.a * 2)}"},
        {"expr": ".inputs | keys", "all": True},
        {"expr": 'if .nodes.a > 3 then "big" else null end'},
    ):
        scheduled = task(config=config)
        answers = WORK(event(scheduled))
        assert answers is not None, config
        completed = answers[1].payload
        assert isinstance(completed, NodeCompleted)
        assert completed.output == await run_transform(scheduled), config


def test_a_noop_outputs_its_config() -> None:
    answers = WORK(event(task("noop", config={"output": {"ok": True}})))
    assert answers is not None
    assert answers[1].payload == NodeCompleted("run-1", "b", 2, 1, {"ok": True})


@pytest.mark.parametrize(
    "scheduled",
    [
        task(config={"expr": "def f: f; f"}),  # outside the grammar: the sandbox's
        task(config={"expr": ".inputs.name + 1"}),  # a jq error: the worker says which
        task(config={"expr": 7}),  # an invalid config: the worker fails it, saying why
        task(config={"expr": "." + "a" * 20_000}),  # over the sandbox's program bound
        task(config={"expr": ".nodes.big"}, output_refs={"big": "sha256:ab"}),  # a blob
        task(config={"expr": ".inputs.name * 200"}),  # jq repeats strings; not the fast path
        task(config={"expr": ".inputs.v"}, input={"inputs": {"v": [float("nan")]}}),  # not JSON
        task("http"),
        task("agent"),
    ],
)
def test_what_the_fast_path_cannot_vouch_for_goes_to_its_worker(scheduled: NodeScheduled) -> None:
    assert WORK(event(scheduled)) is None


def test_an_output_too_large_to_travel_inline_goes_to_the_worker() -> None:
    fits = task(config={"expr": ".inputs.name"}, input={"inputs": {"name": "x" * 1000}})
    assert WORK(event(fits)) is not None
    blob = task(config={"expr": ".inputs.name"}, input={"inputs": {"name": "x" * 1100}})
    assert WORK(event(blob)) is None  # the worker stores it in the blob store


def test_a_condition_is_answered_as_the_evaluator_would() -> None:
    taken = WORK(event(request(".nodes.a > 3")))
    assert taken is not None
    (verdict,) = taken
    assert verdict.payload == ExpressionEvaluated("run-1", "req-1", True)
    assert verdict.event_id == derived_event_id("cause-id", "evaluated")
    assert verdict.actor == "evaluator"
    not_taken = WORK(event(request(".inputs.missing")))
    assert not_taken is not None
    assert not_taken[0].payload == ExpressionEvaluated("run-1", "req-1", False)


def test_a_run_output_is_answered_unless_it_must_go_to_the_blob_store() -> None:
    answered = WORK(event(request("{x: .inputs.x}", purpose="output")))
    assert answered is not None
    assert answered[0].payload == ExpressionEvaluated("run-1", "req-1", {"x": 3})
    large = request(".inputs.name", purpose="output", input={"inputs": {"name": "y" * 2000}})
    assert WORK(event(large)) is None
    assert WORK(event(request("[limit(3; repeat(1))]", purpose="output"))) is None
    held = request(".nodes.big", output_refs={"big": "sha256:ab"})
    assert WORK(event(held)) is None
