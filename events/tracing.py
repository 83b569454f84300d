"""The trace of the work at hand, for log records: set where work starts, read by the
log formatter (`aob.platform.observability`).

It lives in the lowest layer so that every host can set it: the API sets it from the
request, workers and the coordinator from the event they handle (every event carries
its run's `trace_id`), so one trace id follows a run from API through events to workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

TRACE_ID: Final[ContextVar[str | None]] = ContextVar("aob_trace_id", default=None)
RUN_ID: Final[ContextVar[str | None]] = ContextVar("aob_run_id", default=None)


@contextmanager
def traced(trace_id: str | None, run_id: str | None = None) -> Iterator[None]:
    """Log records made inside carry `trace_id` (and `run_id`, when given)."""
    trace_token = TRACE_ID.set(trace_id or None)
    run_token = RUN_ID.set(run_id) if run_id is not None else None
    try:
        yield
    finally:
        if run_token is not None:
            RUN_ID.reset(run_token)
        TRACE_ID.reset(trace_token)
