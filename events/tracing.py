"""The trace of the work at hand, for log records: set where work starts, read by the
log formatter (`aob.platform.observability`).

It lives in the lowest layer so that every host can set it: the API sets it from the
request, workers and the coordinator from the event they handle (every event carries
its run's `trace_id`), so one trace id follows a run from API through events to workers.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Final, Protocol

from aob.events.types import Event

TRACE_ID: Final[ContextVar[str | None]] = ContextVar("aob_trace_id", default=None)
RUN_ID: Final[ContextVar[str | None]] = ContextVar("aob_run_id", default=None)


class _Traced:
    """A plain context manager, not @contextmanager: hosts enter one per task or event,
    and a generator-based one costs 2.5x as much (~1 us against ~0.4 us)."""

    __slots__ = ("_run_id", "_run_token", "_trace_id", "_trace_token")
    span_id = None  # a `Scope` that records no span (tracing off)

    def __init__(self, trace_id: str | None, run_id: str | None) -> None:
        self._trace_id = trace_id or None
        self._run_id = run_id

    def __enter__(self) -> _Traced:
        self._trace_token: Token[str | None] = TRACE_ID.set(self._trace_id)
        run_id = self._run_id
        self._run_token: Token[str | None] | None = (
            RUN_ID.set(run_id) if run_id is not None else None
        )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._run_token is not None:
            RUN_ID.reset(self._run_token)
        TRACE_ID.reset(self._trace_token)

    def outcome(self, payload: object) -> None:
        return None

    def set(self, key: str, value: str | int | float | bool | list[str]) -> None:
        return None


def traced(trace_id: str | None, run_id: str | None = None) -> _Traced:
    """Log records made inside carry `trace_id` (and `run_id`, when given)."""
    return _Traced(trace_id, run_id)


# --- spans (OpenTelemetry) ------------------------------------------------------------
#
# This layer defines what hosts ask of tracing; `aob.platform.tracing` implements it
# with the OpenTelemetry SDK and installs it when a process exports traces. With none
# installed (the default) every helper below is a global read and a return: hosts call
# them per event, and tracing off must cost next to nothing.
#
# A span in one process joins the run's trace from the event alone: the event's
# `trace_id` is the OpenTelemetry trace id (32 lowercase hex digits; any other text is
# hashed into one), and its `span_id` names the span that wrote it (None: the event
# starts a root span of the run's trace).


class Scope(Protocol):
    """The span of the work at hand, as a host sees it."""

    @property
    def span_id(self) -> str | None:
        """16 lowercase hex digits; None when no span is recorded."""

    def outcome(self, payload: object) -> None:
        """Mark the span failed if `payload` is a failure (NodeFailed, ...)."""

    def set(self, key: str, value: str | int | float | bool | list[str]) -> None:
        """An attribute of the span."""


class Spans(Protocol):
    """What a tracing backend does for the hosts (see `aob.platform.tracing`)."""

    def handling(self, event: Event, name: str) -> AbstractContextManager[Scope]:
        """A span for executing `event` (a task, a request), child of the span that
        wrote it; log records inside carry its trace and run, like `traced`."""

    def fold(self, event: Event, fold: Callable[[Event], list[Event]]) -> list[Event]:
        """`fold(event)`; when it decides something, a span for the decision, whose id
        the emitted events carry."""

    def span(self, name: str) -> AbstractContextManager[Scope]:
        """A client span inside the current one (an LLM call)."""

    def current_span_id(self) -> str | None:
        """The id of the span at hand, to record in the events it writes."""

    def instrument(self, client: object) -> None:
        """Trace an httpx / httpx2 client's requests (and propagate the trace)."""


_SPANS: Spans | None = None


def install_spans(spans: Spans | None) -> None:
    """Make `spans` this process's tracing backend (None: tracing off)."""
    global _SPANS
    _SPANS = spans


def installed_spans() -> Spans | None:
    return _SPANS


def handling(event: Event, name: str) -> AbstractContextManager[Scope]:
    """A span for executing `event` when tracing is on; else just `traced`."""
    spans = _SPANS
    if spans is None:
        return _Traced(event.trace_id, event.key)
    return spans.handling(event, name)


def folded(event: Event, fold: Callable[[Event], list[Event]]) -> list[Event]:
    """`fold(event)`, in a decision span when tracing is on."""
    spans = _SPANS
    return fold(event) if spans is None else spans.fold(event, fold)


def span(name: str) -> AbstractContextManager[Scope]:
    """A span inside the current one when tracing is on; else a no-op."""
    spans = _SPANS
    return _NO_SPAN if spans is None else spans.span(name)


def current_trace_id() -> str:
    """The trace of the work at hand ("" outside any), for an event written now."""
    return TRACE_ID.get() or ""


def current_span_id() -> str | None:
    """The span at hand's id, for the `span_id` of an event written now."""
    spans = _SPANS
    return None if spans is None else spans.current_span_id()


def instrument(client: object) -> None:
    """Trace `client`'s requests when tracing is on (call once, where it is made)."""
    spans = _SPANS
    if spans is not None:
        spans.instrument(client)


class _NoSpan:
    """The scope when tracing is off: records nothing."""

    __slots__ = ()
    span_id = None

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def outcome(self, payload: object) -> None:
        return None

    def set(self, key: str, value: str | int | float | bool | list[str]) -> None:
        return None


_NO_SPAN: Final = _NoSpan()
