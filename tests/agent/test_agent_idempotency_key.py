"""Agents' outbound requests (openapi_action, pipeline fetch steps) carry an
Idempotency-Key of their own: (run, node, iteration, attempt, n-th request). Before,
every agent request of every run went out under one shared key (a synthetic task's),
so a receiver that drops repeated keys would have dropped all but the first."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aob.events.types import NodeScheduled
from aob.workers.agent.tools import GuardedFetch
from tests.workers.http.servers import Response, Server
from tests.workers.test_idempotency_key import _keys, _worker


def _attempt(run_id: str = "run-1", attempt: int = 1) -> NodeScheduled:
    return NodeScheduled(run_id, "planner", "agent", 0, attempt, {}, {})


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    running = await Server().start("127.0.0.1")
    running.route("/charge", Response(201, {"charged": True}))
    yield running
    await running.stop()


async def test_each_agent_request_has_its_own_key_stable_across_a_redelivery(
    server: Server,
) -> None:
    fetch = GuardedFetch(_worker())
    url = f"http://127.0.0.1:{server.port}/charge"
    request = {"method": "POST", "url": url, "body": {"amount": 5}}
    try:
        for origin in (_attempt(), _attempt(), _attempt("run-2"), _attempt(attempt=2)):
            bound = fetch.for_task(origin)  # one attempt's tools (the second: redelivered)
            for _ in range(2):
                assert (await bound(request))["status"] == 201
    finally:
        await fetch.aclose()
    keys = _keys(server)
    assert len(keys) == 8
    assert all(keys)
    first, redelivered, other_run, next_attempt = (keys[i : i + 2] for i in range(0, 8, 2))
    assert first[0] != first[1]  # two calls of one attempt
    assert redelivered == first  # the same attempt again: the same keys, in order
    assert not set(first) & set(other_run)
    assert not set(first) & set(next_attempt)
