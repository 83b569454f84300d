"""Folding with work decided in process: the decision unit of the coordinator host.

Some of what the fold emits needs no worker: a `transform` whose jq is on the
sandbox's fast path, an edge condition, a run output (`aob.workers.inline` says
exactly what). An `Inline` answers such an event with the events its worker would
append; `decide` folds those answers at once, round by round (what an answer's fold
emits is asked next), so a DAG of simple steps ends in the batch that submitted it.

Answers are applied where their question was emitted, as emitted events are: every
fold of the log (the host, a restore's refold, the audit) decides through `decide`,
so all of them fold the same events in the same order. The fast path has no CPU
budget (each operator one value in linear time; its size and depth bounds are
settings, not timings), so an answer evaluated again is the answer recorded: the
recovery check compares them like any emitted event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from aob.events.types import Event

# Answers an emitted event with what its worker would append, or None when the event
# must go to its worker.
Inline = Callable[[Event], "list[Event] | None"]
# Events one record's fold may answer in process, at most: a long loop of simple steps
# goes on through its worker, a batch at a time, instead of growing one commit.
MAX_INLINE_ANSWERS: Final = 64


def decide(
    event: Event, fold: Callable[[Event], list[Event]], inline: Inline | None
) -> tuple[list[Event], set[str]]:
    """What folding `event` emits, the answers of `inline` and what folding those
    emits, in that order; and the ids of the events answered (their tasks and
    requests go to no topic)."""
    emitted = fold(event)
    answered: set[str] = set()
    if inline is None:
        return emitted, answered
    asked, budget = list(emitted), MAX_INLINE_ANSWERS  # emitted grows below
    while asked and budget > 0:
        emitted_now: list[Event] = []
        for question in asked:
            answers = inline(question) if budget > 0 else None
            if answers is None:
                continue
            budget -= 1
            answered.add(question.event_id)
            emitted += answers
            for answer in answers:
                emitted_now += fold(answer)
        emitted += emitted_now
        asked = emitted_now
    return emitted, answered
