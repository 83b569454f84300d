"""Bad input across the API is bounded: each limit answered with a clear 4xx
problem+json, swept over the endpoints that take bodies, and nothing recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from aob.events.types import RUNS_TOPIC, WORKFLOWS_TOPIC
from aob.platform.api.bounds import Bounds, check_json
from tests.auth.conftest import Server, transform

PROBLEM = "application/problem+json"
BODY_ENDPOINTS = [
    "/api/v1/runs",
    "/api/v1/workflows",
    "/api/v1/workflows/validate",
    "/api/v1/runs/x/patch",
    "/api/v1/approvals/x/decide",
    "/api/v1/tools",
]


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def definition_with(**inputs: Any) -> dict[str, Any]:
    return {"definition": transform(), "inputs": inputs}


OUT_OF_BOUNDS: list[tuple[str, Any, int, str]] = [
    ("depth", {"definition": transform(), "inputs": nested(65)}, 422, "nested deeper"),
    ("deep past the parser", b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", 422, "deeper"),
    ("string", definition_with(text="x" * (256 * 1024 + 1)), 422, "a string of"),
    ("key", definition_with(**{"k" * 257: 1}), 422, "a key of"),
    ("items", definition_with(list=[0] * 100_001), 422, "100001 items"),
    (
        "values in all",
        definition_with(**{f"l{i}": [0] * 50_000 for i in range(5)}),
        422,
        "values in all",
    ),
    # What Python's parser takes and no store writes: each was a 500.
    ("nan", b'{"inputs": {"x": NaN}}', 422, "a number JSON cannot hold"),
    ("infinity", b'{"inputs": [-Infinity]}', 422, "a number JSON cannot hold"),
    ("1e400", b'{"inputs": {"x": 1e400}}', 422, "a number JSON cannot hold"),
    ("lone surrogate", b'{"inputs": {"x": "a\\ud800"}}', 422, "lone UTF-16 surrogate"),
    ("lone surrogate key", b'{"inputs": {"\\udc00": 1}}', 422, "lone UTF-16 surrogate"),
]


@pytest.fixture
async def admin(server: Server) -> AsyncIterator[Any]:
    async with await server.as_("root", "admin") as client:
        yield client


async def recorded(server: Server) -> int:
    log = server.engine.log
    ends = [*(await log.end_offsets(RUNS_TOPIC)).values()]
    ends += (await log.end_offsets(WORKFLOWS_TOPIC)).values()
    return sum(ends)


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
@pytest.mark.parametrize(
    ("what", "body", "status", "says"), [pytest.param(*case, id=case[0]) for case in OUT_OF_BOUNDS]
)
async def test_json_bodies_out_of_bounds_are_refused(
    server: Server, admin: Any, endpoint: str, what: str, body: Any, status: int, says: str
) -> None:
    before = await recorded(server)
    if isinstance(body, bytes):
        json_type = {"content-type": "application/json"}
        response = await admin.post(endpoint, content=body, headers=json_type)
    else:
        response = await admin.post(endpoint, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert says in response.json()["detail"]
    assert await recorded(server) == before


async def test_a_body_too_large_is_413_even_without_a_content_length(
    server: Server, admin: Any
) -> None:
    big = b'{"inputs": "' + b"x" * (2 * 1024 * 1024) + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    for content in (big, chunks()):
        response = await admin.post(
            "/api/v1/runs", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        assert response.json()["type"].endswith("/payload-too-large")


async def test_identifiers_and_queries_are_bounded(server: Server, admin: Any) -> None:
    long_id = "r" * 201
    for method, path in [
        ("GET", f"/api/v1/runs/{long_id}"),
        ("POST", f"/api/v1/runs/{long_id}/cancel"),
        ("POST", f"/api/v1/approvals/{long_id}/decide"),
        ("GET", f"/api/v1/workflows/{long_id}"),
    ]:
        response = await admin.request(method, path)
        assert response.status_code == 400, path
        assert response.json()["type"].endswith("/identifier-too-long")
    assert (await admin.get("/api/v1/runs/" + "r" * 200)).status_code == 404  # at the limit
    query = await admin.get("/api/v1/runs", params={"cursor": "c" * 9000})
    assert query.status_code == 414
    field = await admin.post("/api/v1/runs", json={"tag": "t" * 129})
    assert field.status_code == 422  # the models' own bounds on named fields


async def test_node_and_edge_counts_are_bounded(server: Server, admin: Any) -> None:
    nodes = [{"id": f"n{i}", "type": "noop"} for i in range(501)]
    too_many = await admin.post("/api/v1/runs", json={"definition": {"name": "w", "nodes": nodes}})
    assert too_many.status_code == 422
    assert any("too many nodes" in e["message"] for e in too_many.json()["errors"])
    edges = [{"from": "a", "to": "b"}] * 2001
    definition = {"name": "w", "nodes": nodes[:2], "edges": edges}
    too_many_edges = await admin.post("/api/v1/workflows/validate", json={"definition": definition})
    assert too_many_edges.status_code == 422
    assert any("too many edges" in e["message"] for e in too_many_edges.json()["errors"])


async def test_a_body_sent_where_no_route_takes_one_is_not_parsed(
    server: Server, admin: Any
) -> None:
    """/health, the docs and the console are open to anyone: a body sent there (a 2 MB
    maze of nested lists took the event loop ~1 s to walk) is not parsed at all. Its
    route answers; were it walked, the nesting would be refused with 422."""
    maze = b'{"x": ' + b"[" * 65 + b"]" * 65 + b"}"
    for path in ("/health", "/openapi.json", "/"):
        response = await admin.post(
            path, content=maze, headers={"content-type": "application/json"}
        )
        assert response.status_code == 405, (path, response.text)
    refused = await admin.post(
        "/api/v1/runs", content=maze, headers={"content-type": "application/json"}
    )
    assert refused.status_code == 422


def test_bounds_name_the_first_offending_pointer() -> None:
    bounds = Bounds(max_depth=3, max_string=4, max_items=2, max_key=3)
    check_json({"a": [1, 2], "b": {"c": "abcd"}}, bounds)  # at every limit: fine
    cases = [
        ({"a": {"b": {"c": {"d": 1}}}}, "/a/b/c/d", "deeper"),
        ({"a": ["x", "abcde"]}, "/a/1", "string of 5"),
        ({"a/b": [1, 2, 3]}, "/a~1b", "3 items"),
        ({"long": 1}, "/", "key of 4"),
        ({"a": [1.5, float("nan")]}, "/a/1", "a number JSON cannot hold"),
        ({"a": {"b": "ok\udfff"}}, "/a/b", "lone UTF-16 surrogate"),
        ({"a": {"\ud800": 1}}, "/a", "lone UTF-16 surrogate"),
    ]
    for document, pointer, says in cases:
        with pytest.raises(Exception, match=says) as raised:
            check_json(document, bounds)
        assert raised.value.extra["pointer"] == pointer  # type: ignore[attr-defined]


def test_the_values_of_a_body_are_bounded_in_all() -> None:
    bounds = Bounds(max_items=10, max_values=25)
    check_json({"a": [0] * 10, "b": [0] * 10, "c": [0] * 2}, bounds)  # 3 + 22 values
    with pytest.raises(Exception, match="more than 25 values in all"):
        check_json({"a": [0] * 10, "b": [0] * 10, "c": [0] * 3}, bounds)
