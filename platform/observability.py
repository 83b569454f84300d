"""Monitoring: Prometheus metrics of every service and structured JSON logs.

Metrics carry the seed's names (`workflow_runs_total`, `node_executions_total`,
`agent_decisions_total`, `http_requests_total`, `hitl_approvals_total`,
`completion_signals_total`, `websocket_connections`) plus `consumer_lag` per consumer
group. Run-level counters are derived from the events the projector applies
(`ObservedStore`), so in a cluster they are counted once, by the projector service;
HTTP and WebSocket figures by each API process (`HttpObservation`); consumer lag
when /metrics is scraped (`record_consumer_lag`).

Log records are one JSON object per line with the trace id of the work at hand
(`aob.events.tracing`): the API sets it from the request, workers from the event.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from aob.events.log.port import EventLog, Record, TopicPartition
from aob.events.tracing import RUN_ID, TRACE_ID, traced
from aob.events.types import (
    AgentUsageRecorded,
    ApprovalDecided,
    Event,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeSkipped,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunSubmitted,
)

__all__ = [
    "HttpObservation",
    "JsonFormatter",
    "Metrics",
    "NodeTypes",
    "ObservedStore",
    "configure_logging",
    "metrics_for",
    "metrics_text",
    "observe_events",
    "record_consumer_lag",
    "trace_id_of",
]

# --- structured logs ------------------------------------------------------------

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_RECORD_ATTRIBUTES: Final = frozenset(
    set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
    | {"message", "asctime", "taskName", "color_message"}  # uvicorn's ANSI copy of message
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, trace and run ids,
    the `extra=` fields, and the exception as text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id, run_id = TRACE_ID.get(), RUN_ID.get()
        if trace_id:
            entry["trace_id"] = trace_id
        if run_id:
            entry["run_id"] = run_id
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(entry, default=str, ensure_ascii=False)


def _iso_time(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


def configure_logging(level: str = "warning", stream: IO[str] | None = None) -> logging.Handler:
    """Route every log record of this process to `stream` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


# --- metrics --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metrics:
    # Runs by lifecycle event: submitted, completed, failed, cancelled.
    workflow_runs: Counter
    # Node executions by node type (when known) and outcome: completed, failed, skipped.
    node_executions: Counter
    # LLM calls made by agent nodes, by model.
    agent_decisions: Counter
    # API requests by method, route template and status code.
    http_requests: Counter
    http_request_seconds: Histogram
    # Approval decisions: approve, reject.
    hitl_approvals: Counter
    # Worker outcomes the coordinator consumes (NodeCompleted, NodeFailed): the log's
    # equivalent of the seed's completion signals.
    completion_signals: Counter
    websocket_connections: Gauge
    # Records a consumer group has yet to read, per topic (summed over partitions).
    consumer_lag: Gauge
    # Submissions refused by the rate limiter, by tier.
    rate_limited: Counter
    # Requests refused for want of a valid credential or role: unauthenticated, forbidden.
    auth_refusals: Counter
    # LLM tokens of agent nodes by tenant, model and kind (prompt, completion, cached:
    # cached tokens are among the prompt's), and their cost in USD at the prices the
    # usage events recorded (models without a price add no cost).
    llm_tokens: Counter
    llm_cost_usd: Counter


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()


def metrics_for(registry: CollectorRegistry = REGISTRY) -> Metrics:
    """The service metrics in `registry`, created on first use (a registry refuses a
    name twice, and tests open several apps in one process)."""
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = _create(registry)
        _BY_REGISTRY[registry] = metrics
    return metrics


def _create(registry: CollectorRegistry) -> Metrics:
    def counter(name: str, doc: str, labels: Sequence[str]) -> Counter:
        return Counter(name, doc, labels, registry=registry)

    return Metrics(
        workflow_runs=counter("workflow_runs", "Workflow runs by lifecycle event", ["event"]),
        node_executions=counter(
            "node_executions", "Node executions by outcome", ["node_type", "outcome"]
        ),
        agent_decisions=counter("agent_decisions", "LLM calls made by agent nodes", ["model"]),
        http_requests=counter("http_requests", "API requests", ["method", "route", "status"]),
        http_request_seconds=Histogram(
            "http_request_duration_seconds",
            "API request duration",
            ["method", "route"],
            registry=registry,
        ),
        hitl_approvals=counter("hitl_approvals", "Approval decisions", ["decision"]),
        completion_signals=counter(
            "completion_signals", "Worker outcomes consumed by the coordinator", ["type"]
        ),
        websocket_connections=Gauge(
            "websocket_connections", "Open WebSocket connections", registry=registry
        ),
        consumer_lag=Gauge(
            "consumer_lag",
            "Records a consumer group has yet to read",
            ["group", "topic"],
            registry=registry,
        ),
        rate_limited=counter("rate_limited", "Submissions refused by the rate limiter", ["tier"]),
        auth_refusals=counter("auth_refusals", "Requests refused by authentication", ["reason"]),
        llm_tokens=counter(
            "aob_llm_tokens", "LLM tokens of agent nodes", ["tenant", "model", "kind"]
        ),
        llm_cost_usd=counter(
            "aob_llm_cost_usd", "LLM cost of agent nodes in USD", ["tenant", "model"]
        ),
    )


def metrics_text(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The exposition of `registry` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def observe_events(
    metrics: Metrics,
    events: Iterable[Event],
    node_types: NodeTypes | None = None,
) -> None:
    """Count what `events` tell: runs, node outcomes, LLM calls, approval decisions.

    `node_types` remembers each scheduled node's type across calls, to label outcomes
    (the outcome events do not carry it)."""
    types = node_types if node_types is not None else NodeTypes()
    for event in events:
        payload = event.payload
        if isinstance(payload, NodeScheduled):
            types.remember(payload.run_id, payload.node_id, payload.node_type)
        elif isinstance(payload, RunSubmitted):
            metrics.workflow_runs.labels("submitted").inc()
        elif isinstance(payload, RunCompleted | RunFailed | RunCancelled):
            metrics.workflow_runs.labels(_RUN_OUTCOMES[type(payload)]).inc()
        elif isinstance(payload, NodeCompleted | NodeFailed):
            outcome = "completed" if isinstance(payload, NodeCompleted) else "failed"
            node_type = types.get(payload.run_id, payload.node_id)
            metrics.node_executions.labels(node_type, outcome).inc()
            metrics.completion_signals.labels(event.type).inc()
        elif isinstance(payload, NodeSkipped):
            node_type = types.get(payload.run_id, payload.node_id)
            metrics.node_executions.labels(node_type, "skipped").inc()
        elif isinstance(payload, AgentUsageRecorded):
            metrics.agent_decisions.labels(payload.model).inc(payload.llm_calls)
            _observe_usage(metrics, payload)
        elif isinstance(payload, ApprovalDecided):
            metrics.hitl_approvals.labels(payload.decision).inc()


def _observe_usage(metrics: Metrics, usage: AgentUsageRecorded) -> None:
    """Tokens and cost by tenant and model (label values cut short, as node types are)."""
    tenant, model = (usage.tenant or "default")[:64], usage.model[:64]
    for kind, count in (
        ("prompt", usage.prompt_tokens),
        ("completion", usage.completion_tokens),
        ("cached", usage.cached_tokens),
    ):
        metrics.llm_tokens.labels(tenant, model, kind).inc(max(count, 0))
    if usage.cost_nano_usd is not None:
        metrics.llm_cost_usd.labels(tenant, model).inc(max(usage.cost_nano_usd, 0) / 1e9)


_RUN_OUTCOMES: Final[Mapping[type, str]] = {
    RunCompleted: "completed",
    RunFailed: "failed",
    RunCancelled: "cancelled",
}


class NodeTypes:
    """The types of recently scheduled nodes, by (run, node): a bounded memory."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._types: OrderedDict[tuple[str, str], str] = OrderedDict()

    def remember(self, run_id: str, node_id: str, node_type: str) -> None:
        self._types[run_id, node_id] = node_type[:64]
        self._types.move_to_end((run_id, node_id))
        if len(self._types) > self.capacity:
            self._types.popitem(last=False)

    def get(self, run_id: str, node_id: str) -> str:
        """The node's type, or "" when it was not seen scheduled (skipped nodes)."""
        return self._types.get((run_id, node_id), "")


class ObservedStore:
    """A read-model store that counts the events it is given, for the projector:
    `ProjectorHost(log, ObservedStore(read_models))`."""

    def __init__(self, store: Any, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics or metrics_for()
        self.node_types = NodeTypes()

    async def apply(self, batch: Sequence[tuple[Record, Event]]) -> None:
        await self.store.apply(batch)
        observe_events(self.metrics, (event for _, event in batch), self.node_types)

    async def advance(self, positions: Mapping[TopicPartition, int]) -> None:
        await self.store.advance(positions)

    async def offsets(self) -> dict[TopicPartition, int]:
        offsets: dict[TopicPartition, int] = await self.store.offsets()
        return offsets


async def record_consumer_lag(
    metrics: Metrics,
    log: EventLog,
    groups: Mapping[str, Sequence[str]],
    positions: Mapping[str, Mapping[TopicPartition, int]] | None = None,
) -> dict[tuple[str, str], int]:
    """Set `consumer_lag` for each group's topics: end offsets minus the group's
    committed offsets (or `positions[group]`, for a consumer that keeps its positions
    elsewhere, like the projector in its store). Returns the lags it set."""
    lags: dict[tuple[str, str], int] = {}
    for group, topics in groups.items():
        own = (positions or {}).get(group)
        for topic in topics:
            ends = await log.end_offsets(topic)
            if own is None:
                done = await log.committed(group, topic)
            else:
                done = {tp.partition: o for tp, o in own.items() if tp.topic == topic}
            lag = sum(max(end - done.get(partition, 0), 0) for partition, end in ends.items())
            metrics.consumer_lag.labels(group, topic).set(lag)
            lags[group, topic] = lag
    return lags


# --- HTTP -----------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def trace_id_of(headers: Mapping[str, str]) -> str:
    """The caller's trace id (W3C traceparent, else X-Trace-Id), else a new one."""
    parts = headers.get("traceparent", "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and _is_hex(parts[1]):
        return parts[1]
    given = headers.get("x-trace-id", "")
    if given and len(given) <= 64 and given.isascii() and given.isprintable():
        return given
    return uuid.uuid4().hex


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text.lower())


class HttpObservation:
    """ASGI middleware: counts requests by route template and status, times them,
    counts open WebSockets, and runs each request inside its trace (log records
    made while handling it carry the trace id; the response names it in X-Trace-Id)."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics or metrics_for()
        # The labelled children of the request metrics, by label values: `labels()`
        # checks and locks on every call (a tenth of this middleware's time). Bounded
        # as the label values are: methods, route templates, status codes.
        self._counted: dict[tuple[str, str, str], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        trace_id = trace_id_of(_trace_headers(scope["headers"]))
        scope.setdefault("state", {})["trace_id"] = trace_id
        with traced(trace_id):
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self._http(scope, receive, send, trace_id)

    async def _http(self, scope: Scope, receive: Receive, send: Send, trace_id: str) -> None:
        status = 500
        started = time.perf_counter()

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-trace-id", trace_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self._observe(scope.get("method", ""), _route_of(scope), status, started)

    def _observe(self, method: str, route: str, status: int, started: float) -> None:
        counted = self._counted.get((method, route, str(status)))
        if counted is None:
            counted = self.metrics.http_requests.labels(method, route, str(status))
            self._counted[method, route, str(status)] = counted
        timed = self._timed.get((method, route))
        if timed is None:
            timed = self.metrics.http_request_seconds.labels(method, route)
            self._timed[method, route] = timed
        counted.inc()
        timed.observe(time.perf_counter() - started)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = False

        async def send_observed(message: Message) -> None:
            nonlocal accepted
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                self.metrics.websocket_connections.inc()
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            if accepted:
                self.metrics.websocket_connections.dec()


_TRACE_HEADERS: Final = frozenset({b"traceparent", b"x-trace-id"})


def _trace_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers `trace_id_of` reads (the last of each, as a dict of all would
    keep), without decoding the others."""
    return {
        key.decode("latin-1"): value.decode("latin-1")
        for key, value in raw
        if key in _TRACE_HEADERS
    }


def _route_of(scope: Scope) -> str:
    """The matched route's template (bounded label values), else "unmatched"."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
