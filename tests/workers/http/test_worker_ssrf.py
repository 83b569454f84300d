"""The guard in the worker, over real loopback sockets: blocked requests never connect.

`recorder` listens on 127.0.0.2 and counts every TCP accept; no test allows 127.0.0.2.
The test server on 127.0.0.1 is let through only where a test allows it explicitly.
"""

from __future__ import annotations

import httpcore
import pytest
from prometheus_client import CollectorRegistry

from aob.workers.host import NodeError
from aob.workers.http.transport import PinnedBackend, pinned
from tests.workers.http.conftest import ScriptedResolver, task
from tests.workers.http.servers import Recorder, Response, Server


async def failure(worker, config, **task_options) -> NodeError:
    with pytest.raises(NodeError) as caught:
        await worker.handle(task(config, **task_options))
    return caught.value


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.2",
        "0x7f000002",
        "2130706434",
        "0177.0.0.2",
        "127.0.0.2.",
        "[::ffff:127.0.0.2]",
    ],
)
async def test_blocked_addresses_never_open_a_connection(make_worker, recorder, host):
    worker = make_worker(allow=["127.0.0.1"])
    error = await failure(worker, {"url": f"http://{host}:{recorder.port}/"})
    assert error.retryable is False
    assert "ip layer" in str(error)
    assert "loopback" in str(error)
    assert recorder.accepts == []


@pytest.mark.parametrize(
    "answer",
    [
        ["127.0.0.2"],
        ["93.184.216.34", "127.0.0.2"],  # one bad answer among good ones blocks the request
        ["127.0.0.2", "93.184.216.34"],
        ["::ffff:127.0.0.2"],
    ],
)
async def test_names_resolving_to_private_addresses_never_connect(make_worker, recorder, answer):
    resolver = ScriptedResolver({"evil.example": [answer]})
    worker = make_worker(resolver=resolver)
    error = await failure(worker, {"url": f"http://evil.example:{recorder.port}/"})
    assert error.retryable is False
    assert "ip layer" in str(error)
    assert "evil.example -> " in str(error)
    assert recorder.accepts == []
    assert resolver.lookups == ["evil.example"]


async def test_literal_hosts_and_blocked_names_never_reach_the_resolver(make_worker, recorder):
    resolver = ScriptedResolver({})
    worker = make_worker(resolver=resolver)
    await failure(worker, {"url": f"http://0x7f.2:{recorder.port}/"})
    await failure(worker, {"url": f"http://LOCALHOST.:{recorder.port}/"})
    await failure(worker, {"url": f"http://metadata.google.internal:{recorder.port}/"})
    assert resolver.lookups == []
    assert recorder.accepts == []


async def test_rebinding_cannot_move_the_connection(make_worker, server):
    """The name resolves once per request and the connection goes to the address that
    was checked: a listener on the rebound address, same port, sees nothing."""
    rebound = await Recorder().start("127.0.0.2", server.port)
    try:
        server.route("/ok", Response(200, {"ok": True}))
        resolver = ScriptedResolver({"rebind.example": [["127.0.0.1"], ["127.0.0.2"]]})
        worker = make_worker(resolver=resolver, allow=["127.0.0.1"])
        url = f"http://rebind.example:{server.port}/ok"

        output = await worker.handle(task({"url": url}))

        assert output["status"] == 200
        assert resolver.lookups == ["rebind.example"]
        (request,) = server.requests
        assert request.local == "127.0.0.1"
        assert request.headers["host"] == f"rebind.example:{server.port}"
        # The next request resolves again, gets the rebound answer, and is refused.
        error = await failure(worker, {"url": url})
        assert "rebind.example -> 127.0.0.2" in str(error)
        assert rebound.accepts == []
        assert len(server.requests) == 1
    finally:
        await rebound.stop()


async def test_a_pooled_connection_is_not_used_for_a_refused_answer(make_worker, server):
    """Keep-alive does not bypass the guard: every request's answer is judged first."""
    server.route("/ok", Response(200, "ok"))
    resolver = ScriptedResolver({"svc.example": [["127.0.0.1"], ["10.0.0.1"], ["127.0.0.1"]]})
    worker = make_worker(resolver=resolver, allow=["127.0.0.1"])
    url = f"http://svc.example:{server.port}/ok"
    assert (await worker.handle(task({"url": url})))["status"] == 200
    await failure(worker, {"url": url})
    assert (await worker.handle(task({"url": url})))["status"] == 200
    assert len(server.requests) == 2
    assert server.connections == 1  # one pooled connection served both allowed requests


async def test_ipv6_literals_are_pinned_too(make_worker, recorder):
    server = await Server().start("::1")
    try:
        server.route("/ok", Response(200, "ok"))
        worker = make_worker(allow=["::1"])
        output = await worker.handle(task({"url": f"http://[::1]:{server.port}/ok"}))
        assert output["body"] == "ok"
        assert server.requests[0].local == "::1"
        assert server.requests[0].headers["host"] == f"[::1]:{server.port}"
        error = await failure(worker, {"url": f"http://[::ffff:127.0.0.2]:{recorder.port}/"})
        assert "ipv4-mapped:loopback" in str(error)
    finally:
        await server.stop()


async def test_the_backend_refuses_connections_the_guard_did_not_pin(server):
    backend = PinnedBackend()
    with pytest.raises(httpcore.ConnectError, match="not checked by the SSRF guard"):
        await backend.connect_tcp("127.0.0.1", server.port)
    with pinned("other.example", server.port, []), pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("other.example", server.port)
    assert server.connections == 0


async def test_the_backend_tries_the_checked_addresses_in_order(server):
    import ipaddress

    backend = PinnedBackend()
    dead = ipaddress.ip_address("127.0.0.3")  # nothing listens there on this port
    with pinned("svc.example", server.port, [dead, ipaddress.ip_address("127.0.0.1")]):
        stream = await backend.connect_tcp("svc.example", server.port)
    await stream.aclose()
    assert server.connections == 1


async def test_redirects_to_private_addresses_are_blocked(make_worker, server, recorder):
    server.route("/go", Response(302, headers={"Location": f"http://127.0.0.2:{recorder.port}/x"}))
    worker = make_worker(allow=["127.0.0.1"])
    error = await failure(worker, {"url": f"http://127.0.0.1:{server.port}/go"})
    assert "redirect from http://127.0.0.1:" in str(error)
    assert "ip layer, rule loopback" in str(error)
    assert error.retryable is False
    assert recorder.accepts == []


async def test_redirect_hops_are_resolved_and_judged_again(make_worker, server, recorder):
    location = f"http://inside.example:{recorder.port}/x"
    server.route("/go", Response(307, headers={"Location": location}))
    resolver = ScriptedResolver({"inside.example": [["127.0.0.2"]]})
    worker = make_worker(resolver=resolver, allow=["127.0.0.1"])
    error = await failure(worker, {"url": f"http://127.0.0.1:{server.port}/go"})
    assert "inside.example -> 127.0.0.2" in str(error)
    assert resolver.lookups == ["inside.example"]
    assert recorder.accepts == []


@pytest.mark.parametrize(
    ("location", "layer_rule"),
    [
        ("file:///etc/passwd", "protocol layer, rule scheme"),
        ("gopher://127.0.0.1:70/_x", "protocol layer, rule scheme"),
        ("http://admin:hunter22@127.0.0.1:{port}/", "protocol layer, rule userinfo"),
        ("/admin", "path layer, rule deny-list"),
        ("/%2e%2e/.env", "path layer, rule deny-list"),
        ("http://[::1]:{port}/", "ip layer, rule loopback"),
        ("http://169.254.169.254/latest/meta-data/", "ip layer, rule cloud-metadata"),
        ("http://metadata.google.internal/", "host layer, rule cloud-metadata"),
    ],
)
async def test_every_redirect_hop_goes_through_every_layer(
    make_worker, server, location, layer_rule
):
    server.route("/go", Response(301, headers={"Location": location.format(port=server.port)}))
    worker = make_worker(allow=["127.0.0.1"])
    error = await failure(worker, {"url": f"http://127.0.0.1:{server.port}/go"})
    assert layer_rule in str(error)
    assert "hunter22" not in str(error)
    assert [r.path for r in server.requests] == ["/go"]


async def test_environment_proxies_are_ignored(make_worker, server, recorder, monkeypatch):
    proxy = f"http://127.0.0.2:{recorder.port}"
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server.route("/direct", Response(200, "direct"))
    worker = make_worker(allow=["127.0.0.1"])
    output = await worker.handle(task({"url": f"http://127.0.0.1:{server.port}/direct"}))
    assert output["body"] == "direct"
    assert recorder.accepts == []
    assert [r.target for r in server.requests] == ["/direct"]  # origin-form: not via a proxy


async def test_the_allow_list_lets_exactly_what_it_names_through(make_worker, server):
    server.route("/ok", Response(200, "ok"))
    url = f"http://127.0.0.1:{server.port}/ok"
    assert "loopback" in str(await failure(make_worker(), {"url": url}))
    assert server.connections == 0
    assert (await make_worker(allow=["127.0.0.0/30"]).handle(task({"url": url})))["body"] == "ok"
    resolver = ScriptedResolver({"dev.internal": [["127.0.0.1"]]})
    by_name = make_worker(resolver=resolver, allow=["dev.internal"])
    named = f"http://dev.internal:{server.port}/ok"
    assert (await by_name.handle(task({"url": named})))["body"] == "ok"


async def test_ports_outside_the_policy_are_refused_before_connecting(make_worker, server):
    worker = make_worker(allow=["127.0.0.1"], ports=["80", "443"])
    error = await failure(worker, {"url": f"http://127.0.0.1:{server.port}/"})
    assert f"protocol layer, rule port): port {server.port}" in str(error)
    assert server.connections == 0


async def test_userinfo_is_refused_before_connecting(make_worker, server):
    worker = make_worker(allow=["127.0.0.1"])
    error = await failure(worker, {"url": f"http://bob:pa55word@127.0.0.1:{server.port}/"})
    assert "rule userinfo" in str(error)
    assert "pa55word" not in str(error)
    assert server.connections == 0


@pytest.mark.parametrize(
    "path", ["/admin", "/x/%2e%2e/admin", "/x/..%2F.env", "/api/keys/1", "/%2561pi/keys"]
)
async def test_denied_paths_are_refused_before_connecting(make_worker, server, path):
    worker = make_worker(allow=["127.0.0.1"])
    error = await failure(worker, {"url": f"http://127.0.0.1:{server.port}{path}"})
    assert "path layer, rule deny-list" in str(error)
    assert server.connections == 0


async def test_blocked_requests_are_counted_by_layer_and_rule(make_worker, recorder):
    registry = CollectorRegistry()
    worker = make_worker(registry=registry)
    await failure(worker, {"url": f"http://127.0.0.2:{recorder.port}/"})
    await failure(worker, {"url": "http://localhost/"})
    assert (
        registry.get_sample_value(
            "aob_http_blocked_requests_total", {"layer": "ip", "rule": "loopback"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "aob_http_blocked_requests_total", {"layer": "host", "rule": "localhost"}
        )
        == 1
    )
    assert registry.get_sample_value("aob_http_nodes_total", {"outcome": "blocked"}) == 2
