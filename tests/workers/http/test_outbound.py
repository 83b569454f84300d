"""The guarded httpx2 client (the agent's LLM SDK's transport): every request judged,
its host resolved once, the connection pinned to a checked address."""

from __future__ import annotations

import httpx2
import pytest

from aob.workers.http.guard import GuardPolicy
from aob.workers.http.outbound import GuardRefused, guarded_httpx2_client
from tests.workers.http.conftest import ScriptedResolver
from tests.workers.http.servers import Recorder, Response, Server


async def test_an_allowed_host_port_is_reached_through_a_pinned_connection(server: Server):
    server.route("/v1/models", Response(200, {"data": []}))
    policy = GuardPolicy.build(allow=[f"127.0.0.1:{server.port}"])
    async with guarded_httpx2_client(policy) as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/v1/models")
    assert response.json() == {"data": []}
    assert server.requests[0].local == "127.0.0.1"


@pytest.mark.parametrize("host", ["[::1]", "127.0.0.2", "localhost"])
async def test_private_addresses_are_refused_before_connecting(recorder: Recorder, host: str):
    policy = GuardPolicy.build(ports=["1-65535"])
    async with guarded_httpx2_client(policy) as client:
        with pytest.raises(GuardRefused) as caught:
            await client.post(f"http://{host}:{recorder.port}/v1/chat/completions", json={})
    assert "blocked by the SSRF guard" in str(caught.value)
    assert recorder.accepts == []


async def test_a_name_resolving_to_a_private_address_is_refused(recorder: Recorder):
    resolver = ScriptedResolver({"llm.example.com": [["127.0.0.2"]]})
    policy = GuardPolicy.build(ports=["1-65535"])
    async with guarded_httpx2_client(policy, resolver=resolver) as client:
        with pytest.raises(GuardRefused) as caught:
            await client.get(f"http://llm.example.com:{recorder.port}/v1/models")
    assert "(ip layer, rule loopback): address llm.example.com -> 127.0.0.2" in str(caught.value)
    assert recorder.accepts == []


async def test_a_redirect_hop_is_judged_again(server: Server, recorder: Recorder):
    target = f"http://127.0.0.2:{recorder.port}/"
    server.route("/go", Response(302, headers={"Location": target}))
    policy = GuardPolicy.build(allow=[f"127.0.0.1:{server.port}"])
    async with guarded_httpx2_client(policy) as client:
        with pytest.raises(httpx2.ConnectError):
            await client.get(f"http://127.0.0.1:{server.port}/go", follow_redirects=True)
    assert recorder.accepts == []
