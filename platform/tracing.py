"""OpenTelemetry traces: one trace per run, exported by OTLP when configured.

Off by default. On when `AOB_OTLP_ENDPOINT` names an OTLP/HTTP collector, or when the
standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` is set
(the exporter also reads the other `OTEL_EXPORTER_OTLP_*` variables: headers, timeout,
compression, certificate); `OTEL_SDK_DISABLED=true` turns it off again. The service is
named `aob-<role>` unless `OTEL_SERVICE_NAME` says otherwise. See docs/tracing.md.

How the spans join up (the hosts call `aob.events.tracing`, implemented here):
- the API request's server span (opentelemetry-instrumentation-asgi), inside
  `HttpObservation`, which chose the request's trace id: the caller's `traceparent`
  (then the span is its child), else X-Trace-Id, else a new one. Root spans take the
  trace id of the work at hand (`_RunTraceIds`), so the OpenTelemetry trace id is the
  id log records and events carry;
- every event records the span that wrote it (`Event.span_id`), so whoever handles it,
  in whichever process, starts its span as a child of that one: coordinator decisions,
  worker executions (transform, http, hitl, agent), expression evaluations;
- inside a worker's span: LLM calls (a GenAI client span) and outbound HTTP requests
  (opentelemetry-instrumentation-httpx, on the clients the workers make, httpx and
  httpx2), which also send `traceparent` on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from types import TracebackType
from typing import Any, Final

from fastapi import FastAPI
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from aob.events.tracing import RUN_ID, TRACE_ID, Scope, install_spans, installed_spans
from aob.events.types import (
    Event,
    ExpressionRequested,
    NodeFailed,
    NodeScheduled,
    RunFailed,
)
from aob.platform.observability import HttpObservation
from aob.platform.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["Tracing", "install_tracing", "otel_trace_id"]

# Requests that would only add noise to traces: probes and scrapes.
_EXCLUDED_URLS: Final = "/health,/metrics"
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)


def otel_trace_id(trace_id: str) -> int:
    """The OpenTelemetry trace id of an aob trace id: the same 32 hex digits, or for
    any other text (a caller's X-Trace-Id) the first 128 bits of its SHA-256."""
    if len(trace_id) == 32:
        try:
            value = int(trace_id, 16)
        except ValueError:
            pass
        else:
            if value:
                return value
    return int.from_bytes(hashlib.sha256(trace_id.encode()).digest()[:16], "big") or 1


def _span_hex(span: Span) -> str:
    return format(span.get_span_context().span_id, "016x")


class _RunTraceIds(RandomIdGenerator):
    """A root span gets the trace id of the work at hand (`TRACE_ID`: the request's, or
    the event's), so that trace and log records and events name one trace."""

    def generate_trace_id(self) -> int:
        chosen = TRACE_ID.get()
        return otel_trace_id(chosen) if chosen else super().generate_trace_id()


class _Scope:
    """One recorded span as a host sees it (`aob.events.tracing.Scope`), current while
    entered; log records inside carry the event's trace and run."""

    __slots__ = ("_attached", "_run_id", "_run_token", "_span", "_trace_id", "_trace_token")

    def __init__(self, span: Span, trace_id: str | None = None, run_id: str | None = None):
        self._span = span
        self._trace_id, self._run_id = trace_id, run_id

    @property
    def span_id(self) -> str | None:
        return _span_hex(self._span)

    def __enter__(self) -> _Scope:
        self._trace_token = TRACE_ID.set(self._trace_id) if self._trace_id else None
        self._run_token = RUN_ID.set(self._run_id) if self._run_id else None
        self._attached = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is not None:
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        self._span.end()
        otel_context.detach(self._attached)
        if self._run_token is not None:
            RUN_ID.reset(self._run_token)
        if self._trace_token is not None:
            TRACE_ID.reset(self._trace_token)

    def outcome(self, payload: object) -> None:
        if isinstance(payload, NodeFailed | RunFailed):
            self._span.set_status(Status(StatusCode.ERROR, payload.error))
        elif isinstance(payload, str):  # the reason a handler crashed
            self._span.set_status(Status(StatusCode.ERROR, payload))

    def set(self, key: str, value: str | int | float | bool | list[str]) -> None:
        self._span.set_attribute(key, value)


class _OtelSpans:
    """`aob.events.tracing.Spans` on an OpenTelemetry tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("aob")

    def _parent(self, event: Event) -> otel_context.Context:
        """The span that wrote `event`, as a remote parent; none: a root of its trace."""
        if event.span_id and event.trace_id:
            try:
                span_id = int(event.span_id, 16)
            except ValueError:
                span_id = 0
            if span_id:
                remote = SpanContext(
                    otel_trace_id(event.trace_id), span_id, is_remote=True, trace_flags=_SAMPLED
                )
                return trace.set_span_in_context(NonRecordingSpan(remote), otel_context.Context())
        return otel_context.Context()  # a root span; _RunTraceIds gives it the run's trace

    def handling(self, event: Event, name: str) -> AbstractContextManager[Scope]:
        token = TRACE_ID.set(event.trace_id or None)  # the trace a root span takes
        try:
            span = self.tracer.start_span(
                name,
                context=self._parent(event),
                kind=SpanKind.CONSUMER,
                attributes=_attributes(event),
            )
        finally:
            TRACE_ID.reset(token)
        return _Scope(span, event.trace_id or None, event.key)

    def fold(self, event: Event, fold: Callable[[Event], list[Event]]) -> list[Event]:
        started = time.time_ns()
        emitted = fold(event)
        if not emitted:
            return emitted  # nothing decided: no span (most acknowledgements)
        token = TRACE_ID.set(event.trace_id or None)
        try:
            span = self.tracer.start_span(
                f"aob.decide {event.type}",
                context=self._parent(event),
                start_time=started,
                attributes={**_attributes(event), "aob.emitted": [e.type for e in emitted]},
            )
        finally:
            TRACE_ID.reset(token)
        span_id = _span_hex(span)
        for decided in emitted:
            if isinstance(decided.payload, RunFailed):
                span.set_status(Status(StatusCode.ERROR, decided.payload.error))
        span.end()
        return [dataclasses.replace(e, span_id=span_id) for e in emitted]

    def span(self, name: str) -> AbstractContextManager[Scope]:
        return _Scope(self.tracer.start_span(name, kind=SpanKind.CLIENT))

    def current_span_id(self) -> str | None:
        context = trace.get_current_span().get_span_context()
        return format(context.span_id, "016x") if context.is_valid else None

    def instrument(self, client: object) -> None:
        # Imported here: the instrumentations pull in wrapt and more, needed only on.
        import httpx
        import httpx2
        from opentelemetry.instrumentation.httpx import (
            HTTPX2ClientInstrumentor,
            HTTPXClientInstrumentor,
        )

        if isinstance(client, httpx.AsyncClient | httpx.Client):
            HTTPXClientInstrumentor.instrument_client(client, tracer_provider=self.provider)
        elif isinstance(client, httpx2.AsyncClient | httpx2.Client):
            # httpx2's clients have httpx's API; the stubs name httpx's types only.
            HTTPX2ClientInstrumentor.instrument_client(
                client,  # type: ignore[arg-type]
                tracer_provider=self.provider,
            )


def _attributes(event: Event) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "aob.run_id": event.key,
        "aob.event.id": event.event_id,
        "aob.event.type": event.type,
    }
    payload = event.payload
    if isinstance(payload, NodeScheduled):
        attributes.update(
            {
                "aob.node.id": payload.node_id,
                "aob.node.type": payload.node_type,
                "aob.node.iteration": payload.iteration,
                "aob.node.attempt": payload.attempt,
            }
        )
    elif isinstance(payload, ExpressionRequested):
        attributes["aob.expression.purpose"] = payload.purpose
    return attributes


class Tracing:
    """One process's tracer provider, installed as the hosts' spans backend."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.spans = _OtelSpans(provider)

    @classmethod
    def with_processor(cls, processor: SpanProcessor, service_name: str = "aob") -> Tracing:
        resource = Resource.create(
            {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
        )
        # Always on: a run's spans come from several processes, each following the
        # parent its event names, so a sampling decision at the API would not reach
        # them (docs/tracing.md: sample in the collector).
        provider = TracerProvider(
            resource=resource, id_generator=_RunTraceIds(), sampler=sampling.ALWAYS_ON
        )
        provider.add_span_processor(processor)
        return cls(provider)

    @classmethod
    def with_exporter(cls, exporter: SpanExporter, service_name: str = "aob") -> Tracing:
        """Spans exported one by one as they end (tests: an InMemorySpanExporter)."""
        return cls.with_processor(SimpleSpanProcessor(exporter), service_name)

    @classmethod
    def from_settings(
        cls, settings: Settings, role: str, environ: Mapping[str, str] = os.environ
    ) -> Tracing | None:
        """OTLP/HTTP export in batches when configured (see the module), else None."""
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        endpoint = settings.otlp_endpoint
        if endpoint is None and not (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        ):
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=f"{endpoint.rstrip('/')}/v1/traces" if endpoint else None
        )
        return cls.with_processor(BatchSpanProcessor(exporter), f"aob-{role}")

    def install(self) -> None:
        install_spans(self.spans)

    def shutdown(self) -> None:
        """Stop tracing in this process; spans not exported yet are flushed first."""
        if installed_spans() is self.spans:
            install_spans(None)
        self.provider.shutdown()


def install_tracing(app: FastAPI, settings: Settings, role: str) -> Tracing | None:
    """Trace `app`'s service when tracing is on: the one already installed in this
    process (tests install one with an in-memory exporter), else the settings'. Adds
    the server-span middleware just inside `HttpObservation`; a tracing it made itself
    is shut down (flushed) when the app stops."""
    spans = installed_spans()
    owned: Tracing | None = None
    if isinstance(spans, _OtelSpans):
        provider = spans.provider
    else:
        owned = Tracing.from_settings(settings, role)
        if owned is None:
            return None
        owned.install()
        provider = owned.provider
    _add_server_spans(app, provider)
    if owned is not None:
        app.router.lifespan_context = _shut_down_after(app.router.lifespan_context, owned)
    return owned


def _add_server_spans(app: FastAPI, provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.middleware import Middleware

    # Inside HttpObservation, which picks the request's trace id first (its root span
    # takes it, see _RunTraceIds); outside auth, so refused requests are traced too.
    middleware = Middleware(
        OpenTelemetryMiddleware,
        excluded_urls=_EXCLUDED_URLS,
        tracer_provider=provider,
        exclude_spans=["receive", "send"],
    )
    stack = app.user_middleware
    observation: object = HttpObservation
    outer = next((i for i, m in enumerate(stack) if m.cls is observation), -1)
    stack.insert(outer + 1, middleware)


def _shut_down_after(
    lifespan: Callable[[Any], AbstractAsyncContextManager[Any]], tracing: Tracing
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    @asynccontextmanager
    async def traced_lifespan(app: Any) -> AsyncIterator[Any]:
        try:
            async with lifespan(app) as state:
                yield state
        finally:
            tracing.shutdown()

    return traced_lifespan


@contextmanager
def tracing_with(exporter: SpanExporter, service_name: str = "aob") -> Iterator[Tracing]:
    """Tracing installed for the block, exported to `exporter` (tests)."""
    tracing = Tracing.with_exporter(exporter, service_name)
    tracing.install()
    try:
        yield tracing
    finally:
        tracing.shutdown()
