"""Decides the tenant expressions the coordinator asks for, in the jq sandbox.

The coordinator's fold never runs tenant code: for an edge condition, a loop
condition or the run's output expression it emits `ExpressionRequested` (also the
work item on `aob.expressions`). This host evaluates it under the sandbox's CPU,
memory and output budgets, off the event loop, and appends `ExpressionEvaluated`
to `aob.runs`, where the fold picks the verdict up. The verdict is thus in the log:
every replay decides the same, however long the evaluation took or whether a budget
ran out.

At-least-once, like a worker: answers are appended with the committed offsets, and
an answer's id derives from its request's, so a re-evaluated request's duplicate
answer is ignored by the fold.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aob.events.codec import decode, encode
from aob.events.ids import derived_event_id
from aob.events.log.consumer import Consumer
from aob.events.log.port import Append, EventLog, Record
from aob.events.tracing import handling
from aob.events.types import (
    EXPRESSIONS_TOPIC,
    RUNS_TOPIC,
    Event,
    ExpressionEvaluated,
    ExpressionRequested,
)
from aob.projections.runtime.deadletter import dead_letter, describe
from aob.projections.workflow.expressions import ExpressionError
from aob.workers.outputs import OutputError, OutputStore
from aob.workers.sandbox import JqSandboxBusy, jq_first

log = logging.getLogger(__name__)

GROUP = "aob-evaluator"
_BUSY_BACKOFF_S = 0.05  # every sandbox child is taken: ask again shortly


class ExpressionEvaluator:
    """Consumes `aob.expressions`; one batch of requests is evaluated concurrently."""

    def __init__(self, event_log: EventLog, outputs: OutputStore) -> None:
        self.log = event_log
        self.outputs = outputs
        self.consumer = Consumer(event_log, GROUP, [EXPRESSIONS_TOPIC])

    async def start(self) -> None:
        await self.consumer.start()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            records = await self.consumer.poll(timeout=0.5)
            if records:
                answers = await asyncio.gather(*(self._answer(r) for r in records))
                await self.consumer.commit_unless_fenced([a for ap in answers for a in ap])

    async def _answer(self, record: Record) -> list[Append]:
        """The verdict's append; a request that cannot be read or evaluated is set
        aside (its run fails with the reason) so the others go on."""
        try:
            event = decode(record.value)
        except Exception as error:
            log.error("set aside an undecodable expression request: %s", error)
            return dead_letter(record, GROUP, describe(error))
        request = event.payload
        if not isinstance(request, ExpressionRequested):
            return []
        try:
            with handling(event, f"aob.evaluate {request.purpose}") as scope:
                answer = await self.evaluate(request)
            return [self._verdict(event, answer, scope.span_id)]
        except Exception as error:  # a bug here must not stop every run's conditions
            log.exception("expression request %s could not be answered", request.request_id)
            return dead_letter(record, GROUP, describe(error), what=event.type)

    @staticmethod
    def _verdict(event: Event, answer: ExpressionEvaluated, span_id: str | None) -> Append:
        verdict = Event(
            event_id=derived_event_id(event.event_id, "evaluated"),
            key=event.key,
            occurred_at=time.time_ns() // 1_000_000,
            payload=answer,
            trace_id=event.trace_id,
            causation_id=event.event_id,
            actor="evaluator",
            span_id=span_id,
        )
        return Append(RUNS_TOPIC, verdict.key, encode(verdict))

    async def evaluate(self, request: ExpressionRequested) -> ExpressionEvaluated:
        """The verdict on `request`: a boolean for conditions, the value for outputs."""
        run_id, request_id = request.run_id, request.request_id
        try:
            context = await self.outputs.resolve(request.input, request.output_refs)
            result = await _first(request.program, context)
            if request.purpose != "output":
                taken = result is not None and result is not False
                return ExpressionEvaluated(run_id, request_id, taken)
            value, ref = await self.outputs.store(result)
        except (ExpressionError, OutputError) as error:
            return ExpressionEvaluated(run_id, request_id, error=str(error))
        return ExpressionEvaluated(run_id, request_id, value, ref)


async def _first(program: str, context: object) -> object:
    """The program's first output; waits while every sandbox child is taken."""
    while True:
        try:
            return await jq_first(program, context)
        except JqSandboxBusy:
            await asyncio.sleep(_BUSY_BACKOFF_S)
