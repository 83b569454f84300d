"""A bound secret reaches its host, in its header, and nowhere else: real loopback
servers, allowed one host:port each (AOB_HTTP_ALLOW), default port policy."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from aob.events.types import NodeScheduled
from aob.workers.host import NodeError
from aob.workers.http import HttpWorker, HttpWorkerSettings
from aob.workers.http.settings import SecretBinding
from tests.secrets.leaks import leaks
from tests.workers.http.servers import Request, Response, Server

SECRET = "gh-Zq9vW7xY2pL4mK8sT3"


def echo(request: Request) -> Response:
    return Response(200, {"headers": request.headers})


@pytest.fixture
async def a() -> AsyncIterator[Server]:
    server = await Server().start("127.0.0.1")
    server.route("/echo", echo)
    yield server
    await server.stop()


@pytest.fixture
async def b() -> AsyncIterator[Server]:
    server = await Server().start("127.0.0.1")
    server.route("/echo", echo)
    server.route("/landing", echo)
    yield server
    await server.stop()


@pytest.fixture
async def worker(a: Server, b: Server) -> AsyncIterator[HttpWorker]:
    binding = {
        "value": SECRET,
        "header": "Authorization",
        "format": "Bearer {value}",
        "hosts": [f"127.0.0.1:{a.port}"],
        "tenants": ["acme"],
    }
    settings = HttpWorkerSettings(  # type: ignore[call-arg]
        _env_file=None,
        allow=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],  # default ports otherwise
        secrets={"github": SecretBinding.model_validate(binding)},
    )
    running = HttpWorker(settings, registry=CollectorRegistry())
    yield running
    await running.aclose()


def task(config: dict[str, Any], tenant: str | None = "acme") -> NodeScheduled:
    context = {"inputs": {}, "nodes": {}, "iteration": 0}
    return NodeScheduled("run-1", "call", "http", 0, 1, config, context, tenant=tenant)


async def refused(worker: HttpWorker, config: dict[str, Any], tenant: str | None) -> NodeError:
    with pytest.raises(NodeError) as caught:
        await worker.handle(task(config, tenant))
    assert caught.value.retryable is False
    assert not leaks(str(caught.value), SECRET)
    return caught.value


async def test_the_bound_host_gets_the_secret_in_its_header_only(worker, a, b, caplog):
    caplog.set_level(logging.DEBUG)
    output = await worker.handle(
        task({"url": f"http://127.0.0.1:{a.port}/echo", "secrets": ["github"]})
    )
    (request,) = a.requests
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    others = {k: v for k, v in request.headers.items() if k != "authorization"}
    assert not leaks(json.dumps(others) + request.target + request.body.decode(), SECRET)
    # A echoed the header back: the output and the logs show it redacted.
    assert output["body"]["headers"]["authorization"] == "[redacted]"
    assert not leaks(json.dumps(output) + caplog.text, SECRET)
    assert b.connections == 0


async def test_the_same_node_toward_another_port_is_refused_before_sending(worker, a, b):
    error = await refused(
        worker, {"url": f"http://127.0.0.1:{b.port}/echo", "secrets": ["github"]}, "acme"
    )
    assert str(error) == (
        f"secret 'github' is not bound to host 127.0.0.1:{b.port}: the request was not sent"
        " (AOB_HTTP_SECRETS names its hosts)"
    )
    assert b.connections == 0
    assert a.connections == 0


async def test_a_redirect_to_another_host_drops_the_secret(worker, a, b):
    a.route("/go", Response(302, headers={"Location": f"http://127.0.0.1:{b.port}/landing"}))
    output = await worker.handle(
        task({"url": f"http://127.0.0.1:{a.port}/go", "secrets": ["github"]})
    )
    assert output["status"] == 200
    assert a.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    (landed,) = b.requests
    assert landed.path == "/landing"
    assert "authorization" not in landed.headers
    assert not leaks(json.dumps(landed.headers) + landed.target, SECRET)


async def test_another_tenant_cannot_use_the_secret(worker, a):
    for tenant in ("other", None):  # None: the default tenant, not bound either
        error = await refused(
            worker, {"url": f"http://127.0.0.1:{a.port}/echo", "secrets": ["github"]}, tenant
        )
        shown = tenant or "default"
        assert f"no secret named 'github' is bound for tenant '{shown}'" in str(error)
    assert a.connections == 0


async def test_a_node_cannot_also_set_the_bound_header(worker, a):
    config = {
        "url": f"http://127.0.0.1:{a.port}/echo",
        "secrets": ["github"],
        "headers": {"authorization": "Bearer mine"},
    }
    error = await refused(worker, config, "acme")
    assert "config.headers: Authorization is filled by the secret 'github'" in str(error)
    assert a.connections == 0


async def test_a_host_port_allow_entry_allows_that_port_only(worker, a):
    other = await Server().start("127.0.0.1")
    try:
        error = await refused(worker, {"url": f"http://127.0.0.1:{other.port}/"}, "acme")
        assert "blocked by the SSRF guard (protocol layer, rule port)" in str(error)
        assert other.connections == 0
        ok = await worker.handle(task({"url": f"http://127.0.0.1:{a.port}/echo"}))
        assert ok["status"] == 200
        assert "authorization" not in a.requests[-1].headers  # not asked for: not sent
    finally:
        await other.stop()


async def test_a_template_over_its_jq_budget_fails_the_node_naming_the_budget(worker, a):
    error = await refused(
        worker, {"url": f"http://127.0.0.1:{a.port}/{{{{ last(range(1e10)) }}}}"}, "acme"
    )
    assert "config.url: template" in str(error)
    assert "jq CPU budget exceeded" in str(error)
    assert "AOB_JQ_CPU_MS" in str(error)
    assert a.connections == 0
