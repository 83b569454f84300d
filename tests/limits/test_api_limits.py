"""Issue 11's attacks on the real API (the in-process app with its real engine): each
is a 4xx problem+json, and the work it caused is bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from aob.events.partitioner import partition_for
from aob.events.types import RUNS_TOPIC, TOOLS_TOPIC, WORKFLOWS_TOPIC
from tests.auth.conftest import Server, serving
from tests.support.load import CoreWaits

PROBLEM = "application/problem+json"
BIG = 2**63


@pytest.fixture
async def server(tmp_path: Any) -> AsyncIterator[Server]:
    limits = {"simple": 100, "standard": 1, "heavy": 1}
    async with serving(tmp_path / "data", rate_limit=True, rate_limits=limits) as running:
        yield running


@pytest.fixture
async def admin(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with await server.as_("root", "admin") as client:
        yield client


@pytest.fixture
async def viewer(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with await server.as_("eve", "viewer") as client:
        yield client


async def recorded(server: Server, leaving_out: str | None = None) -> int:
    """Records in the log's topics (but `leaving_out`)."""
    log = server.engine.log
    topics = [t for t in (RUNS_TOPIC, WORKFLOWS_TOPIC, TOOLS_TOPIC) if t != leaving_out]
    return sum([sum((await log.end_offsets(t)).values()) for t in topics])


async def run_records(server: Server, run_id: str) -> int:
    """The records of one run in aob.runs (its partition, read whole)."""
    log = server.engine.log
    ends = await log.end_offsets(RUNS_TOPIC)
    partition = partition_for(run_id, len(ends))
    count, offset = 0, 0
    while offset < ends[partition]:
        records = await log.read(RUNS_TOPIC, partition, offset)
        count += sum(1 for record in records if record.key == run_id)
        offset = records[-1].offset + 1
    return count


async def waiting(admin: httpx.AsyncClient, run_id: str) -> None:
    """Until the run waits for its approval (its request recorded and projected)."""
    async with asyncio.timeout(30):
        while True:
            response = await admin.get(f"/api/v1/runs/{run_id}")
            if response.status_code == 200 and response.json()["status"] == "waiting":
                return
            await asyncio.sleep(0.01)


def problem_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    return body


def messages(problem: dict[str, Any]) -> list[str]:
    return [e["message"] for e in problem.get("errors", [])]


# --- 1. validation does bounded work ---------------------------------------------------


async def test_validating_a_huge_definition_stops_at_the_count_limit(viewer):
    """3,000 transforms (~180 KB, under AOB_WORKFLOW_MAX_DOCUMENT_BYTES): refused for the
    node count alone, in well under a second, without one jq program compiled (no jq
    problem, though every one is bad)."""
    nodes = [
        {"id": f"n{i}", "type": "transform", "config": {"expr": f".[{i}"}} for i in range(3_000)
    ]
    # CPU time, not wall time (the server runs in this process): the work done, which a
    # loaded machine does not inflate. Compiling 16,000 programs took 20 s of it.
    started = time.process_time()
    response = await viewer.post(
        "/api/v1/workflows/validate", json={"definition": {"name": "big", "nodes": nodes}}
    )
    worked = time.process_time() - started
    problem = problem_of(response, 422)
    assert messages(problem) == ["too many nodes: 3000 > limit 500 (AOB_WORKFLOW_MAX_NODES)"]
    assert worked < 2.0


async def test_a_jq_program_over_its_size_limit_is_not_compiled(viewer):
    """An over-long program is reported as such: not compiled (it would be a jq error)."""
    long_and_broken = "(" * 20_000
    definition = {
        "name": "w",
        "nodes": [{"id": "a", "type": "transform", "config": {"expr": long_and_broken}}],
    }
    response = await viewer.post("/api/v1/workflows/validate", json={"definition": definition})
    problem = problem_of(response, 422)
    assert problem["errors"] == [
        {
            "path": "/nodes/0/config/expr",
            "message": "jq program too long: 20000 bytes > limit 16384 "
            "(AOB_WORKFLOW_MAX_EXPRESSION_BYTES)",
        }
    ]


async def test_too_many_distinct_jq_programs_are_refused_before_compiling(viewer):
    nodes = [{"id": f"n{i}", "type": "noop"} for i in range(400)]
    edges = [{"from": "n0", "to": f"n{i}", "when": f".x{i} |"} for i in range(1, 400)]
    edges += [{"from": "n1", "to": f"n{i}", "when": f".y{i} |"} for i in range(2, 400)]
    definition = {"name": "w", "nodes": nodes, "edges": edges}
    response = await viewer.post("/api/v1/workflows/validate", json={"definition": definition})
    problem = problem_of(response, 422)
    assert messages(problem) == [
        "too many jq programs: 797 > limit 500 (AOB_WORKFLOW_MAX_EXPRESSIONS)"
    ]


async def test_health_answers_while_a_definition_at_the_limits_is_validated(server, viewer):
    """500 distinct programs (the limit) compile off the event loop."""
    nodes = [
        {"id": f"n{i}", "type": "transform", "config": {"expr": f".x{i} | length"}}
        for i in range(500)
    ]
    validating = asyncio.create_task(
        viewer.post(
            "/api/v1/workflows/validate", json={"definition": {"name": "w", "nodes": nodes}}
        )
    )
    await asyncio.sleep(0)  # let the validation start
    waits, started = CoreWaits(None), time.monotonic()  # the loop is this thread
    health = await viewer.get("/health")
    assert health.status_code == 200
    assert time.monotonic() - started - waits.waited() < 1.0  # less the machine's load
    assert (await validating).status_code == 200


# --- 3. every bad input is a 4xx -------------------------------------------------------

DEEP = b'{"definition": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
BAD_INPUTS = [
    ("GET", "/api/v1/runs?cursor=x", {}, 400, "invalid-cursor"),
    ("GET", "/api/v1/runs?cursor=WzkyMjMzNzIwMzY4NTQ3NzU4MDgsImEiXQ", {}, 400, "invalid-cursor"),
    ("GET", f"/api/v1/runs/x/events?after={BIG}", {}, 422, "invalid-request"),
    ("GET", f"/api/v1/workflows/x?version={BIG}", {}, 422, "invalid-request"),
    ("GET", f"/api/v1/runs/x/stream?last_event_id={BIG}", {}, 422, "invalid-request"),
    (
        "POST",
        "/api/v1/runs",
        {"json": {"workflow_id": "x", "version": BIG}},
        422,
        "invalid-request",
    ),
    ("POST", "/api/v1/runs", {"json": {"tag": "x", "version": BIG}}, 422, "invalid-request"),
    (
        "POST",
        "/api/v1/tags/t/move",
        {"json": {"workflow_id": "x", "version": BIG}},
        422,
        "invalid-request",
    ),
    ("POST", "/api/v1/runs/x/replay", {"json": {"from_event": BIG}}, 422, "invalid-request"),
    ("POST", "/api/v1/runs", {"content": DEEP}, 422, "input-out-of-bounds"),
    (
        "POST",
        "/api/v1/runs",
        {"content": DEEP, "headers": {"content-type": "text/plain"}},
        422,
        "input-out-of-bounds",
    ),
    (
        "POST",
        "/api/v1/workflows/validate",
        {"content": DEEP, "headers": {"content-type": "application/x-www-form-urlencoded"}},
        422,
        "input-out-of-bounds",
    ),
]


@pytest.mark.parametrize(("method", "url", "options", "status", "slug"), BAD_INPUTS)
async def test_bad_input_is_a_4xx_problem(server, admin, method, url, options, status, slug):
    before = await recorded(server)
    transport = httpx.ASGITransport(app=server.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://aob", headers=admin.headers
    ) as client:
        response = await client.request(method, url, **options)
    problem = problem_of(response, status)
    assert problem["type"].endswith("/" + slug)
    assert await recorded(server) == before


# --- 2. tool schemas are never fetched --------------------------------------------------


async def test_a_tool_schema_referring_outside_itself_is_refused_and_never_fetched(server, admin):
    asked: list[bytes] = []

    async def listener(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await reader.read(1024))
        writer.close()

    remote = await asyncio.start_server(listener, "127.0.0.1", 0)
    port = remote.sockets[0].getsockname()[1]
    try:
        before = await recorded(server)
        body = {
            "name": "lookup",
            "steps": [{"op": "jq_transform", "expr": "."}],
            "parameters": {
                "type": "object",
                "properties": {"x": {"$ref": f"http://127.0.0.1:{port}/s.json"}},
            },
        }
        response = await admin.post("/api/v1/tools", json=body)
        problem = problem_of(response, 422)
        assert "refers outside the document" in problem["detail"]
        assert "spec.parameters/properties/x/$ref" in problem["detail"]
        assert await recorded(server) == before
    finally:
        remote.close()
        await remote.wait_closed()
    assert asked == []


# --- 6. credentials are not written into definitions ------------------------------------


async def test_a_literal_authorization_header_is_refused_at_its_path(server, admin):
    before = await recorded(server)
    definition = {
        "name": "leaky",
        "nodes": [
            {
                "id": "call",
                "type": "http",
                "config": {
                    "url": "https://example.org",
                    "headers": {"Authorization": "Bearer s3cr3t"},
                },
            }
        ],
    }
    response = await admin.post("/api/v1/workflows", json={"definition": definition})
    problem = problem_of(response, 422)
    [error] = problem["errors"]
    assert error["path"] == "/nodes/0/config/headers/Authorization"
    assert "AOB_HTTP_SECRETS" in error["message"]
    assert "s3cr3t" not in response.text
    assert await recorded(server) == before


# --- 7. the rate-limit tier follows the patched workflow --------------------------------


def waiting_run() -> dict[str, Any]:
    """No agent (simple tier); waits for an approval, so it can be patched."""
    return {
        "name": "waits",
        "nodes": [{"id": "gate", "type": "hitl", "config": {"message": "ok?"}}],
    }


PATCH_IN_AN_AGENT = {
    "operations": [
        {
            "op": "add",
            "path": "/nodes/-",
            "value": {"id": "helper", "type": "agent", "config": {"prompt": "go"}},
        },
        {"op": "add", "path": "/edges", "value": [{"from": "gate", "to": "helper"}]},
    ]
}


async def test_a_patch_that_raises_the_tier_is_charged_to_the_higher_tier(server, admin):
    """standard: 1 a minute. The first patch to an agent is charged there; the second
    run's such patch is refused with 429 and Retry-After, and nothing is recorded."""
    first = (await admin.post("/api/v1/runs", json={"definition": waiting_run()})).json()["run_id"]
    second = (await admin.post("/api/v1/runs", json={"definition": waiting_run()})).json()["run_id"]
    for run_id in (first, second):  # both wait for their approval before they are patched
        await waiting(admin, run_id)
    charged = await admin.post(f"/api/v1/runs/{first}/patch", json=PATCH_IN_AN_AGENT)
    assert charged.status_code in (200, 202), charged.text
    # The first run goes on (its new agent node runs, and records events) meanwhile:
    # what must not grow is the second run's events and the other topics.
    before = (await run_records(server, second), await recorded(server, RUNS_TOPIC))
    refused = await admin.post(f"/api/v1/runs/{second}/patch", json=PATCH_IN_AN_AGENT)
    problem = problem_of(refused, 429)
    assert problem["tier"] == "standard"
    assert int(refused.headers["retry-after"]) >= 1
    assert (await run_records(server, second), await recorded(server, RUNS_TOPIC)) == before
    patches = (await admin.get(f"/api/v1/runs/{second}/patches")).json()["items"]
    assert patches == []
    plain = {"operations": [{"op": "add", "path": "/description", "value": "still simple"}]}
    assert (await admin.post(f"/api/v1/runs/{second}/patch", json=plain)).status_code in (200, 202)
