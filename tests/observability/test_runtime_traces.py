"""The coordinator host's log lines carry the trace and run of the event at hand."""

from __future__ import annotations

import logging

from aob.events.codec import encode
from aob.events.log.port import Record
from aob.events.tracing import RUN_ID, TRACE_ID
from aob.events.types import RUNS_TOPIC, Event, RunSubmitted
from aob.projections.runtime.coordinator import CoordinatorHost


class _Traces(logging.Handler):
    """Records (message, trace id, run id) as the JSON formatter would read them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str | None, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), TRACE_ID.get(), RUN_ID.get()))


class _BrokenFold(CoordinatorHost):
    """The real host with a fold that fails (the real fold has no failing input)."""

    def _fold(self, event: Event) -> list[Event]:
        raise RuntimeError("bug")


def test_a_failing_fold_is_logged_in_the_runs_trace() -> None:
    event = Event("evt-1", "run-7", 1, RunSubmitted("run-7", {}, {}, []), trace_id="abc123")
    record = Record(RUNS_TOPIC, 0, 0, "run-7", encode(event), 1)
    handler = _Traces()
    logger = logging.getLogger("aob.projections.runtime.coordinator")
    logger.addHandler(handler)
    try:
        # The record is set aside (a dead letter, its run failed), not raised.
        appends = _BrokenFold(None).handle([record])  # type: ignore[arg-type]  # reads no log
    finally:
        logger.removeHandler(handler)
    assert handler.seen == [("fold failed on RunSubmitted evt-1", "abc123", "run-7")]
    assert [a.topic for a in appends] == ["aob.deadletter", RUNS_TOPIC]
    assert (TRACE_ID.get(), RUN_ID.get()) == (None, None)  # nothing leaks past it
