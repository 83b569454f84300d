"""OpenTelemetry traces (issue 16): one trace per run, from the API request through
coordinator decisions and worker executions to the LLM call and the outbound HTTP call,
exported to the SDK's in-memory exporter; its id is the events' and the log records'."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aob.events.codec import Codec, as_logged, envelope_schema
from aob.events.tracing import RUN_ID, installed_spans
from aob.events.types import Event, RunSubmitted
from aob.platform.observability import JsonFormatter
from aob.platform.tracing import otel_trace_id, tracing_with
from tests.agent.harness import Aob, running_aob, serving_app
from tests.fixtures.llm import LlmServer

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
ASK = "advise on {{ .nodes.double }}"


class Site:
    """A local HTTP site for the http node; it keeps the headers of each request."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def price(self, request: Request) -> JSONResponse:
        self.headers.append(dict(request.headers))
        return JSONResponse({"price": 21})


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    with tracing_with(memory):
        yield memory
    assert installed_spans() is None  # shut down: the next test runs untraced


@pytest.fixture
async def site() -> AsyncIterator[tuple[Site, str]]:
    shop = Site()
    app = Starlette(routes=[Route("/price", shop.price)])
    async with serving_app(app) as url:
        yield shop, url


@pytest.fixture
async def aob(
    tmp_path: Any, scripted_llm: LlmServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Aob]:
    """The embedded engine behind the API, untraced unless tracing is installed first."""
    monkeypatch.setenv("AOB_HTTP_ALLOW", "127.0.0.1")
    monkeypatch.setenv("AOB_HTTP_PORTS", "1-65535")
    async with running_aob(tmp_path / "data", scripted_llm.base_url) as instance:
        yield instance


@pytest.fixture
async def traced(exporter: InMemorySpanExporter, aob: Aob) -> Aob:
    """`aob`, started with tracing installed (to the in-memory exporter)."""
    return aob


class _Records(logging.Handler):
    """Log records as the JSON formatter writes them, for one run."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if RUN_ID.get() is not None:
            self.lines.append(json.loads(self.format(record)))


def _workflow(url: str) -> dict[str, Any]:
    return {
        "name": "traced",
        "nodes": [
            {"id": "fetch", "type": "http", "config": {"url": f"{url}/price"}},
            {"id": "double", "type": "transform", "config": {"expr": ".nodes.fetch.body.price*2"}},
            {"id": "advise", "type": "agent", "config": {"prompt": ASK}},
        ],
        "edges": [{"from": "fetch", "to": "double"}, {"from": "double", "to": "advise"}],
        "output": ".nodes.advise.answer",
    }


async def _run(aob: Aob, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    body = {"definition": _workflow(url), "inputs": {}}
    response = await aob.client.post("/api/v1/runs", json=body, headers=headers or {})
    assert response.status_code == 202, response.text
    run = await aob.finished(response.json()["run_id"])
    assert run["status"] == "completed", run
    assert run["output"] == "Buy at 42."
    return run


def _of_trace(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == int(trace_id, 16)]


def _hex(span_id: int) -> str:
    return format(span_id, "016x")


def _one(spans: list[ReadableSpan], name: str, **attributes: Any) -> ReadableSpan:
    found = [
        s
        for s in spans
        if s.name == name and all(_attrs(s).get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [s.name for s in spans])
    return found[0]


def _parent(span: ReadableSpan) -> str | None:
    return None if span.parent is None else _hex(span.parent.span_id)


def _id(span: ReadableSpan) -> str:
    return _hex(span.context.span_id)


async def test_a_run_is_one_trace_from_the_request_to_the_llm_and_http_calls(
    traced: Aob, site: tuple[Site, str], scripted_llm: LlmServer, exporter: InMemorySpanExporter
) -> None:
    shop, url = site
    scripted_llm.serve({"match": "advise on 42", "turns": [{"content": "Buy at 42."}]})
    records = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    try:
        run = await _run(traced, url)
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    trace_id = run["trace_id"]
    spans = _of_trace(exporter, trace_id)

    request = _one(spans, "POST /api/v1/runs")
    assert request.parent is None  # the caller sent no traceparent: the run's trace starts here
    submitted = _one(spans, "aob.decide RunSubmitted")
    assert _parent(submitted) == _id(request)
    fetch = _one(spans, "aob.execute http", **{"aob.node.id": "fetch"})
    assert _parent(fetch) == _id(submitted)
    get = _one(spans, "GET")  # the outbound request, by the httpx instrumentation
    assert _parent(get) == _id(fetch)
    # The decision on fetch's outcome is the child of fetch's execution, and so on.
    (after_fetch,) = [s for s in spans if _parent(s) == _id(fetch) and s.name.startswith("aob.")]
    assert after_fetch.name == "aob.decide NodeCompleted"
    assert _attrs(after_fetch)["aob.emitted"] == ("NodeScheduled",)
    double = _one(spans, "aob.execute transform", **{"aob.node.id": "double"})
    assert _parent(double) == _id(after_fetch)
    advise = _one(spans, "aob.execute agent", **{"aob.node.id": "advise"})
    (after_double,) = [s for s in spans if _parent(s) == _id(double)]
    assert _parent(advise) == _id(after_double)
    chat = _one(spans, "chat gpt-4o-mini")  # the LLM call, a GenAI client span
    assert _parent(chat) == _id(advise)
    assert _attrs(chat)["gen_ai.request.model"] == "gpt-4o-mini"
    assert _attrs(chat)["gen_ai.usage.output_tokens"] > 0
    post = _one(spans, "POST")  # the LLM request itself, by the httpx2 instrumentation
    assert _parent(post) == _id(chat)
    # Every span's parent is in the trace: nothing dangles, nothing is in another trace.
    ids = {_id(s) for s in spans}
    assert {_parent(s) for s in spans} - {None} <= ids
    # The outbound request carried the trace on (W3C traceparent).
    assert shop.headers[0]["traceparent"].split("-")[1] == trace_id

    events = await traced.events(run["run_id"])
    assert {e["trace_id"] for e in events} == {trace_id}
    lines = [line for line in records.lines if line.get("run_id") == run["run_id"]]
    assert lines, "no log records were made while the run's work was at hand"
    assert {line["trace_id"] for line in lines} == {trace_id}


async def test_a_callers_traceparent_is_the_runs_trace(
    traced: Aob, site: tuple[Site, str], scripted_llm: LlmServer, exporter: InMemorySpanExporter
) -> None:
    scripted_llm.serve({"match": "advise on 42", "turns": [{"content": "Buy at 42."}]})
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    run = await _run(traced, site[1], {"traceparent": traceparent})
    assert run["trace_id"] == CALLER_TRACE
    spans = _of_trace(exporter, CALLER_TRACE)
    request = _one(spans, "POST /api/v1/runs")
    assert _parent(request) == CALLER_SPAN
    assert request.parent is not None
    assert request.parent.is_remote
    assert {s.name for s in spans} >= {"aob.decide RunSubmitted", "aob.execute agent", "GET"}
    events = await traced.events(run["run_id"])
    assert {e["trace_id"] for e in events} == {CALLER_TRACE}


async def test_tracing_off_records_no_spans_and_events_name_none(
    aob: Aob, site: tuple[Site, str], scripted_llm: LlmServer
) -> None:
    # An exporter that no tracing is installed with: nothing may reach it.
    untouched = InMemorySpanExporter()
    assert installed_spans() is None
    scripted_llm.serve({"match": "advise on 42", "turns": [{"content": "Buy at 42."}]})
    run = await _run(aob, site[1])
    assert untouched.get_finished_spans() == ()
    assert "traceparent" not in site[0].headers[0]  # nothing propagated either
    assert {e.get("span_id") for e in await aob.events(run["run_id"])} <= {None}


def test_an_x_trace_id_that_is_not_hex_maps_to_one_otel_trace_id() -> None:
    assert otel_trace_id(CALLER_TRACE) == int(CALLER_TRACE, 16)
    assert otel_trace_id("order-7") == otel_trace_id("order-7") != otel_trace_id("order-8")
    assert 0 < otel_trace_id("0" * 32) < 2**128  # the invalid all-zero id is hashed


def test_span_id_is_an_added_field_with_a_null_default() -> None:
    history = Path(__file__).parents[2] / "events/schemas/history/c377dc9264aaf098.avsc"
    before = json.loads(history.read_text())  # the envelope just before span_id
    now = envelope_schema()
    added = [f for f in now["fields"] if f["name"] not in {g["name"] for g in before["fields"]}]
    assert [(f["name"], f["type"], f["default"]) for f in added] == [
        ("span_id", ["null", "string"], None)
    ]
    # Registered as a writer: events written before span_id existed stay readable.
    assert Codec(now).register_writer_schema(before) in _known_writers()
    written = Event("evt-2", "run-1", 1, RunSubmitted("run-1", {}, {}, []), span_id=CALLER_SPAN)
    assert as_logged(written) == written
    assert as_logged(dataclasses.replace(written, span_id=None)).span_id is None


def _known_writers() -> set[bytes]:
    from aob.events import codec

    return set(codec._DEFAULT._writers)


def _attrs(span: ReadableSpan) -> Mapping[str, Any]:
    """A span's attributes (the SDK types them optional)."""
    return span.attributes or {}
