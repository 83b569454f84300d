"""Work the coordinator may decide in process, in the batch that asked for it.

A `transform` or `noop` node and an expression request (an edge or loop condition, the
run's output) whose jq program is *simple* (`projections/workflow/simple_jq.py`: each
operator one value in linear time, no budget to reach) need no sandbox and no I/O.
Sending them through a task topic costs a worker's read, an outcome's append and a
second coordinator batch per step of the DAG: on the embedded log most of a run's
latency, on Kafka a transaction per partition and step.

`InlineWork` answers such an event with exactly the events its worker (or the
expression evaluator) would append: the same payloads, the same ids (derived from the
task's), the same actors. The coordinator host folds the answers at once and appends
them with what it emitted, in the same fenced commit; the task never reaches its
topic. Anything it cannot vouch for answers None and goes the usual way: a program
outside the grammar, an evaluation the fast path leaves to jq (errors included, so
the sandbox's message stays the one users see), an input held in the blob store, an
output too large to travel inline.

The answer is decided once and recorded, as a worker's is: a restore or an audit
folds the recorded answer and never evaluates again, so replay stays deterministic.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from aob.events.codec import dump_json
from aob.events.ids import derived_event_id
from aob.events.tracing import handling, installed_spans
from aob.events.types import (
    Event,
    ExpressionEvaluated,
    ExpressionRequested,
    Json,
    NodeCompleted,
    NodeScheduled,
    NodeStarted,
    Payload,
)
from aob.projections.workflow.simple_jq import Fallback, compile_simple, evaluate_simple
from aob.workers.sandbox.settings import SandboxSettings

# The worker id its NodeStarted names, and so the actor of its outcomes (`worker:inline`).
INLINE_WORKER = "inline"
EVALUATOR_ACTOR = "evaluator"  # as the expression evaluator's verdicts
INLINE_TYPES = frozenset({"transform", "noop"})


class _NotInline(Exception):
    """The event goes the usual way."""


@dataclass(frozen=True)
class InlineWork:
    """Decides simple transforms, noops and expressions; None for anything else."""

    sandbox: SandboxSettings
    inline_max_bytes: int  # larger outputs go to the blob store: a worker's job
    clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000

    def __call__(self, event: Event) -> list[Event] | None:
        payload = event.payload
        if isinstance(payload, NodeScheduled) and payload.node_type in INLINE_TYPES:
            # The worker's span name: a trace reads the same whoever executed the node.
            return self._traced(event, f"aob.execute {payload.node_type}", self._node)
        if isinstance(payload, ExpressionRequested):
            return self._traced(event, f"aob.evaluate {payload.purpose}", self._evaluated)
        return None

    def _traced(
        self, event: Event, name: str, answer: Callable[[Event], list[Event]]
    ) -> list[Event] | None:
        """`answer(event)` (None if it cannot be decided here) and, tracing on, a span
        for it, which the last answer (the outcome) names as the worker's does. The span
        opens once the answer is known (an attempt left to the worker makes none); the
        fast path takes microseconds, which is all the span leaves out."""
        try:
            answers = answer(event)
        except _NotInline:
            return None
        if installed_spans() is None:
            return answers
        with handling(event, name) as scope:
            pass
        if scope.span_id is not None:
            answers[-1] = dataclasses.replace(answers[-1], span_id=scope.span_id)
        return answers

    def _node(self, event: Event) -> list[Event]:
        task = event.payload
        assert isinstance(task, NodeScheduled)
        if task.node_type == "transform":
            output = self._transform(task)
        else:  # noop
            output = task.config.get("output") if isinstance(task.config, dict) else None
        self._check_inline_size(output)
        node = (task.run_id, task.node_id, task.iteration, task.attempt)
        actor = f"worker:{INLINE_WORKER}"
        return [
            self._answer(event, "started", actor, NodeStarted(*node, INLINE_WORKER)),
            self._answer(event, "outcome", actor, NodeCompleted(*node, output)),
        ]

    def _evaluated(self, event: Event) -> list[Event]:
        request = event.payload
        assert isinstance(request, ExpressionRequested)
        return [self._answer(event, "evaluated", EVALUATOR_ACTOR, self._verdict(request))]

    def _transform(self, task: NodeScheduled) -> Json:
        config = task.config if isinstance(task.config, dict) else {}
        program = config.get("expr")
        if not isinstance(program, str) or task.output_refs:
            raise _NotInline  # an invalid config fails in the worker, with its message
        value = self._first(program, task.input)
        return [value] if config.get("all") else value

    def _verdict(self, request: ExpressionRequested) -> ExpressionEvaluated:
        if request.output_refs:
            raise _NotInline
        result = self._first(request.program, request.input)
        if request.purpose != "output":
            taken = result is not None and result is not False
            return ExpressionEvaluated(request.run_id, request.request_id, taken)
        self._check_inline_size(result)
        return ExpressionEvaluated(request.run_id, request.request_id, result)

    def _first(self, program: str, value: Json) -> Json:
        """What the sandbox's fast path answers (it is the same code), or _NotInline."""
        if len(program.encode()) > self.sandbox.max_program_bytes:
            raise _NotInline
        compiled = compile_simple(program)
        if compiled is None:
            raise _NotInline
        try:
            return evaluate_simple(
                compiled,
                value,
                max_bytes=self.sandbox.output_bytes,
                max_depth=self.sandbox.max_depth,
            )
        except Fallback:
            raise _NotInline from None

    def _check_inline_size(self, value: Json) -> None:
        try:
            size = len(dump_json(value).encode())
        except (TypeError, ValueError, RecursionError):
            raise _NotInline from None
        if size > self.inline_max_bytes:
            raise _NotInline

    def _answer(self, cause: Event, kind: str, actor: str, payload: Payload) -> Event:
        return Event(
            event_id=derived_event_id(cause.event_id, kind),
            key=cause.key,
            occurred_at=self.clock(),
            payload=payload,
            trace_id=cause.trace_id,
            causation_id=cause.event_id,
            actor=actor,
        )
