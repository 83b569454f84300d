"""Agent nodes reach only the LLM endpoints the operator configured, each with its own
key; the deployment's key goes to the default endpoint only; any other endpoint is
reached through the SSRF guard. Real engine, real SDK, real listeners."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aob.workers.agent.demo_llm import ScriptedLlm
from tests.agent.harness import Aob, agent, node, running_aob, serving_app
from tests.fixtures.llm import LlmServer
from tests.workers.http.servers import Recorder

DEFAULT_KEY = "sk-default-Hq7Wm2Xr9Tz4"
LOCAL_KEY = "sk-local-Pv3Ns8Kd6Lf1"


@dataclass
class KeyedLlm:
    """A scripted LLM that records the Authorization header of every request."""

    llm: ScriptedLlm = field(default_factory=lambda: ScriptedLlm({"conversations": []}))
    authorizations: list[str] = field(default_factory=list)
    base_url: str = ""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            self.authorizations.append(headers.get(b"authorization", b"").decode())
        await self.llm.app(scope, receive, send)


@pytest.fixture
async def local_llm() -> AsyncIterator[KeyedLlm]:
    keyed = KeyedLlm()
    async with serving_app(keyed) as url:  # type: ignore[arg-type]
        keyed.base_url = url + "/v1"
        yield keyed


@pytest.fixture
async def listener() -> AsyncIterator[Recorder]:
    """A listener on [::1] that no test allows: nothing may ever connect to it."""
    running = await Recorder().start("::1")
    yield running
    await running.stop()


@pytest.fixture
async def aob(
    tmp_path: Path,
    scripted_llm: LlmServer,
    local_llm: KeyedLlm,
    listener: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Aob]:
    port = local_llm.base_url.split(":")[2].split("/")[0]
    monkeypatch.setenv("AOB_HTTP_ALLOW", f"127.0.0.1:{port}")  # that endpoint only
    monkeypatch.setenv("AOB_HTTP_PORTS", "1-65535")  # so the address is what is judged
    endpoints = {
        "local": {"base_url": local_llm.base_url, "api_key": LOCAL_KEY, "tenants": ["*"]},
        "loopback6": {"base_url": f"http://[::1]:{listener.port}/v1", "tenants": ["*"]},
    }
    async with running_aob(
        tmp_path / "data",
        scripted_llm.base_url,
        llm_api_key=DEFAULT_KEY,
        llm_endpoints=endpoints,
        llm_max_retries=0,
    ) as instance:
        yield instance


def one_agent(**config: Any) -> dict[str, Any]:
    return {"name": "llm", "nodes": [agent("ask", "say hello", **config)]}


async def failure(aob: Aob, **config: Any) -> str:
    run = await aob.finished(await aob.submit(one_agent(**config)))
    assert run["status"] == "failed", run
    events = await aob.events(run["run_id"])
    failed = [e["data"] for e in events if e["type"] == "NodeFailed"]
    assert len(failed) == 1, failed  # final: not retried
    text = json.dumps(events) + json.dumps(run)
    assert DEFAULT_KEY not in text
    assert LOCAL_KEY not in text
    error: str = failed[0]["error"]
    return error


async def test_a_free_base_url_is_refused_and_never_contacted(
    aob: Aob, listener: Recorder, scripted_llm: LlmServer, local_llm: KeyedLlm
):
    # (Not "loopback6"'s base_url, which would name that endpoint.)
    error = await failure(aob, base_url=f"http://[::1]:{listener.port}/v2")
    assert "config.base_url: only LLM endpoints the operator configured may be used" in error
    assert "name one in config.endpoint" in error
    assert listener.accepts == []
    assert scripted_llm.requests == []
    assert local_llm.authorizations == []


async def test_a_named_endpoint_gets_its_own_key_and_never_the_deployments(
    aob: Aob, scripted_llm: LlmServer, local_llm: KeyedLlm
):
    run = await aob.finished(await aob.submit(one_agent(endpoint="local")))
    assert run["status"] == "completed", run
    assert node(run, "ask")["output"]["answer"] == "I have no script for this."
    assert local_llm.authorizations == [f"Bearer {LOCAL_KEY}"]
    assert scripted_llm.requests == []  # the default endpoint was not used
    # Its exact base_url names it too.
    run = await aob.finished(await aob.submit(one_agent(base_url=local_llm.base_url)))
    assert run["status"] == "completed", run
    assert local_llm.authorizations == [f"Bearer {LOCAL_KEY}"] * 2


async def test_a_named_endpoint_on_a_blocked_address_is_refused_by_the_guard(
    aob: Aob, listener: Recorder
):
    error = await failure(aob, endpoint="loopback6")
    assert error.startswith("LLM endpoint 'loopback6': blocked by the SSRF guard")
    assert "(ip layer, rule loopback)" in error
    assert "AOB_HTTP_ALLOW" in error
    assert listener.accepts == []


async def test_an_unknown_endpoint_is_a_config_error(aob: Aob):
    error = await failure(aob, endpoint="elsewhere")
    assert "config.endpoint: no LLM endpoint named 'elsewhere'" in error
    assert "configured for it: default, local, loopback6" in error
