"""The worker's requests and outputs against a real loopback server (allowed explicitly):
templates, bodies, retries, Retry-After, size limits, expected statuses, redaction."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import socket
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from aob.workers.host import NodeError
from tests.workers.http.conftest import task
from tests.workers.http.servers import Request, Response

LOCAL = ["127.0.0.1"]


@pytest.fixture
def worker(make_worker):
    return make_worker(allow=LOCAL)


@pytest.fixture
def base(server) -> str:
    return f"http://127.0.0.1:{server.port}"


async def failure(worker, config, **task_options) -> NodeError:
    with pytest.raises(NodeError) as caught:
        await worker.handle(task(config, **task_options))
    return caught.value


def echo(request: Request) -> Response:
    return Response(
        200,
        {
            "method": request.method,
            "target": request.target,
            "headers": request.headers,
            "body": request.body.decode(),
        },
    )


# --- requests and outputs ---------------------------------------------------------------


async def test_templates_fill_the_request_from_the_run_context(worker, server, base):
    server.route("/items/42", echo)
    config = {
        "url": base + "/items/{{ .inputs.id }}",
        "query": {"q": "{{ .nodes.search.term }}", "tags": ["a", "b"], "n": 3, "on": True},
        "headers": {"X-Trace": "trace-{{ .nodes.search.trace }}"},
    }
    output = await worker.handle(
        task(config, inputs={"id": 42}, nodes={"search": {"term": "ü x", "trace": 7}})
    )
    assert output["status"] == 200
    assert output["body"]["target"] == "/items/42?q=%C3%BC+x&tags=a&tags=b&n=3&on=true"
    assert output["body"]["headers"]["x-trace"] == "trace-7"
    assert output["headers"]["content-type"] == "application/json"
    assert output["elapsed_ms"] > 0
    assert output["attempts"] == 1


async def test_a_whole_value_template_keeps_its_json_type(worker, server, base):
    server.route("/orders", echo)
    config = {"method": "post", "url": base + "/orders", "body": "{{ .nodes.cart }}"}
    output = await worker.handle(task(config, nodes={"cart": {"items": [1, 2], "total": 9.5}}))
    sent = output["body"]
    assert sent["method"] == "POST"
    assert json.loads(sent["body"]) == {"items": [1, 2], "total": 9.5}
    assert sent["headers"]["content-type"] == "application/json"


async def test_requests_say_who_sends_them(worker, server, base):
    server.route("/echo", echo)
    default = await worker.handle(task({"url": base + "/echo"}))
    assert default["body"]["headers"]["user-agent"] == "aob-http-worker"
    assert default["body"]["headers"]["accept-encoding"] == "identity"
    custom = await worker.handle(task({"url": base + "/echo", "headers": {"User-Agent": "mine/1"}}))
    assert custom["body"]["headers"]["user-agent"] == "mine/1"


async def test_string_bodies_are_sent_as_text_unless_told(worker, server, base):
    server.route("/text", echo)
    text = await worker.handle(task({"method": "PUT", "url": base + "/text", "body": "hello"}))
    assert text["body"]["body"] == "hello"
    assert text["body"]["headers"]["content-type"] == "text/plain; charset=utf-8"
    as_json = await worker.handle(
        task({"method": "PUT", "url": base + "/text", "body": "hello", "body_format": "json"})
    )
    assert as_json["body"]["body"] == '"hello"'
    custom = await worker.handle(
        task(
            {
                "method": "PUT",
                "url": base + "/text",
                "body": "<a/>",
                "headers": {"Content-Type": "application/xml"},
            }
        )
    )
    assert custom["body"]["headers"]["content-type"] == "application/xml"


async def test_bodies_are_parsed_by_content_type(worker, server, base):
    server.route("/json", Response(200, b'{"a": [1, 2]}', {"Content-Type": "application/x+json"}))
    server.route("/bad-json", Response(200, b"{nope", {"Content-Type": "application/json"}))
    server.route("/nan", Response(200, b"NaN", {"Content-Type": "application/json"}))
    server.route(
        "/latin1",
        Response(
            200, "caf\u00e9".encode("latin-1"), {"Content-Type": "text/plain; charset=latin-1"}
        ),
    )
    server.route("/empty", Response(204))
    assert (await worker.handle(task({"url": base + "/json"})))["body"] == {"a": [1, 2]}
    assert (await worker.handle(task({"url": base + "/bad-json"})))["body"] == "{nope"
    assert (await worker.handle(task({"url": base + "/nan"})))["body"] == "NaN"
    assert (await worker.handle(task({"url": base + "/latin1"})))["body"] == "caf\u00e9"
    assert (await worker.handle(task({"url": base + "/empty"})))["body"] is None
    head = await worker.handle(task({"method": "HEAD", "url": base + "/json"}))
    assert head["body"] is None
    assert head["status"] == 200


async def test_redirects_are_followed_with_rfc_method_rules(worker, server, base):
    server.route("/see-other", Response(303, headers={"Location": "/landing"}))
    server.route("/temporary", Response(307, headers={"Location": "/landing"}))
    server.route("/landing", echo)
    after_post = await worker.handle(
        task({"method": "POST", "url": base + "/see-other", "body": {"x": 1}})
    )
    assert after_post["body"]["method"] == "GET"
    assert after_post["body"]["body"] == ""
    assert "content-type" not in after_post["body"]["headers"]
    kept = await worker.handle(
        task({"method": "POST", "url": base + "/temporary", "body": {"x": 1}})
    )
    assert kept["body"]["method"] == "POST"
    assert json.loads(kept["body"]["body"]) == {"x": 1}


async def test_secret_headers_stay_on_the_same_origin_only(worker, server, base):
    other = await type(server)().start("127.0.0.1")
    try:
        other.route("/landing", echo)
        server.route("/landing", echo)
        server.route("/same", Response(302, headers={"Location": "/landing"}))
        server.route(
            "/away", Response(302, headers={"Location": f"http://127.0.0.1:{other.port}/landing"})
        )
        headers = {
            "Authorization": "Bearer abcdefgh12345",
            "Cookie": "sid=0123456789ab",
            "X-Trace": "t-1",
        }
        same = await worker.handle(task({"url": base + "/same", "headers": headers}))
        assert same["body"]["headers"]["authorization"] == "[redacted]"  # sent, then hidden
        assert server.requests[-1].headers["authorization"] == "Bearer abcdefgh12345"
        away = await worker.handle(task({"url": base + "/away", "headers": headers}))
        received = other.requests[-1].headers
        assert "authorization" not in received
        assert "cookie" not in received
        assert received["x-trace"] == "t-1"
        assert away["status"] == 200
    finally:
        await other.stop()


async def test_too_many_redirects_fail_the_node(make_worker, server, base):
    server.route("/loop", Response(302, headers={"Location": "/loop"}))
    worker = make_worker(allow=LOCAL, max_redirects=3)
    error = await failure(worker, {"url": base + "/loop"})
    assert "more than 3 redirects" in str(error)
    assert error.retryable is False
    assert len(server.requests) == 4


async def test_redirects_are_not_followed_when_the_node_says_so(worker, server, base):
    server.route("/moved", Response(301, headers={"Location": "/elsewhere"}))
    output = await worker.handle(
        task({"url": base + "/moved", "follow_redirects": False, "expect_status": ["3xx"]})
    )
    assert output["status"] == 301
    assert output["headers"]["location"] == "/elsewhere"
    assert [r.path for r in server.requests] == ["/moved"]


# --- expected statuses ------------------------------------------------------------------


async def test_expected_statuses(worker, server, base):
    server.route("/missing", Response(404, "no such item"))
    server.route("/created", Response(201, "made"))
    error = await failure(worker, {"url": base + "/missing"})
    assert "HTTP 404 Not Found (expected 2xx): no such item" in str(error)
    assert error.retryable is False
    output = await worker.handle(task({"url": base + "/missing", "expect_status": [404]}))
    assert output["status"] == 404
    assert (await worker.handle(task({"url": base + "/created"})))["status"] == 201
    error = await failure(worker, {"url": base + "/created", "expect_status": [200, "3xx"]})
    assert "expected 200, 3xx" in str(error)


# --- retries ----------------------------------------------------------------------------


async def test_503_then_success_is_retried_honouring_retry_after(worker, server, base, sleep):
    server.script("/flaky", Response(503, "busy", {"Retry-After": "2"}), Response(200, "ok"))
    output = await worker.handle(task({"url": base + "/flaky", "retries": 2}))
    assert output["body"] == "ok"
    assert output["attempts"] == 2
    assert len(sleep.delays) == 1
    assert sleep.delays[0] >= 2


async def test_429_with_an_http_date_retry_after(worker, server, base, sleep):
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    server.script(
        "/limited", Response(429, "slow down", {"Retry-After": when}), Response(200, "ok")
    )
    output = await worker.handle(task({"url": base + "/limited", "retries": 1}))
    assert output["attempts"] == 2
    assert 1.5 <= sleep.delays[0] <= 3.5


async def test_retries_are_bounded_and_back_off_with_jitter(worker, server, base, sleep):
    server.route("/down", Response(500, "down"))
    config = {"url": base + "/down", "retries": {"max": 3, "backoff_ms": 100}}
    error = await failure(worker, config)
    assert error.retryable is True
    assert "HTTP 500" in str(error)
    assert len(server.requests) == 4
    assert len(sleep.delays) == 3
    for n, delay in enumerate(sleep.delays):
        assert 0 <= delay <= 0.1 * 2**n


async def test_a_retry_after_beyond_the_limit_is_not_waited_for(make_worker, server, base, sleep):
    worker = make_worker(allow=LOCAL, max_retry_delay_ms=5000)
    server.route("/later", Response(503, "", {"Retry-After": "3600"}))
    error = await failure(worker, {"url": base + "/later", "retries": 3})
    assert "Retry-After 3600 s is longer than the 5 s the worker waits" in str(error)
    assert error.retryable is True
    assert sleep.delays == []
    assert len(server.requests) == 1


async def test_the_task_timeout_bounds_the_retries(worker, server, base, sleep):
    server.route("/busy", Response(503, "", {"Retry-After": "1"}))
    await failure(worker, {"url": base + "/busy", "retries": 5}, timeout_ms=500)
    assert sleep.delays == []
    assert len(server.requests) == 1


async def test_post_is_not_retried_after_sending(worker, server, base, sleep):
    server.route("/pay", Response(503, "busy"))
    error = await failure(
        worker, {"method": "POST", "url": base + "/pay", "body": {"n": 1}, "retries": 3}
    )
    assert error.retryable is True  # the coordinator's policy may still try again
    assert len(server.requests) == 1
    assert sleep.delays == []


async def test_post_is_retried_when_the_node_says_so(worker, server, base):
    server.script("/pay", Response(503, "busy"), Response(200, "paid"))
    config = {
        "method": "POST",
        "url": base + "/pay",
        "body": {"n": 1},
        "retries": {"max": 3, "non_idempotent": True},
    }
    assert (await worker.handle(task(config)))["body"] == "paid"
    assert [r.method for r in server.requests] == ["POST", "POST"]


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_connect_errors_are_retried_for_any_method(worker, sleep):
    """Nothing was sent when the connection was refused, so even a POST may go again."""
    port = unused_port()
    error = await failure(
        worker, {"method": "POST", "url": f"http://127.0.0.1:{port}/", "retries": 2}
    )
    assert "cannot connect" in str(error)
    assert error.retryable is True
    assert len(sleep.delays) == 2


async def test_a_slow_server_times_out(worker, server, base):
    async def slow(_request: Request) -> Response:
        await asyncio.sleep(5)
        return Response(200, "late")

    server.route("/slow", slow)
    error = await failure(worker, {"url": base + "/slow", "timeout_ms": 200})
    assert "timed out" in str(error) or "within 0.2 s" in str(error)
    assert error.retryable is True


# --- limits -----------------------------------------------------------------------------


async def test_response_size_is_limited(worker, server, base):
    server.route("/big", Response(200, b"x" * 5000))
    server.route("/big-stream", Response(200, b"y" * 5000, until_close=True))
    server.route("/small", Response(200, b"z" * 1000))
    for path in ("/big", "/big-stream"):
        error = await failure(worker, {"url": base + path, "max_response_bytes": 1000})
        assert "exceeds max_response_bytes (1000)" in str(error)
        assert error.retryable is False
    output = await worker.handle(task({"url": base + "/small", "max_response_bytes": 1000}))
    assert len(output["body"]) == 1000


async def test_a_head_response_declaring_a_large_body_is_fine(worker, server, base):
    server.route("/big", Response(200, b"x" * 5000))
    output = await worker.handle(
        task({"method": "HEAD", "url": base + "/big", "max_response_bytes": 1000})
    )
    assert output["headers"]["content-length"] == "5000"
    assert output["body"] is None


async def test_node_limits_cannot_exceed_the_workers(make_worker, base):
    worker = make_worker(allow=LOCAL, max_response_bytes=1000, max_retries=2, max_timeout_ms=1000)
    for config, message in [
        ({"max_response_bytes": 1001}, "config.max_response_bytes: 1001 exceeds"),
        ({"retries": 3}, "config.retries: between 0 and 2"),
        ({"timeout_ms": 5000}, "config.timeout_ms: 5000 exceeds"),
    ]:
        error = await failure(worker, {"url": base + "/", **config})
        assert message in str(error)
        assert error.retryable is False


# --- bad config -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "config.url: Field required"),
        ({"url": "http://x/", "method": "TRACE"}, "config.method: 'TRACE' is not one of"),
        ({"url": "http://x/", "headers": {"Host": "internal"}}, "Host is set by the worker"),
        ({"url": "http://x/", "headers": {"bad name": "v"}}, "not a valid header name"),
        ({"url": "http://x/", "headers": {"X": "a\r\nInjected: 1"}}, "line breaks are not allowed"),
        ({"url": "http://x/", "headers": {"X": "caf\u00e9"}}, "config.headers.X: only ASCII"),
        ({"url": "http://x/", "expect_status": ["abc"]}, "not a status or a class"),
        ({"url": "http://x/", "unknown": 1}, "config.unknown: Extra inputs are not permitted"),
        ({"url": "{{ .inputs | nope }}"}, "config.url: template"),
        ({"url": "http://x/{{ now }}"}, "not allowed (now)"),
        ({"url": "{{ .inputs.missing }}"}, "config.url: Input should be a valid string"),
    ],
)
async def test_bad_config_fails_the_node_without_retries(worker, config, message):
    error = await failure(worker, config)
    assert message in str(error)
    assert error.retryable is False


async def test_config_must_be_an_object(worker):
    error = await failure(worker, "http://example.com/")
    assert "needs a config object" in str(error)


# --- secrets ----------------------------------------------------------------------------


def bound(value: str, header: str = "Authorization", fmt: str = "{value}") -> dict[str, Any]:
    """A secret bound to a header toward the loopback server."""
    return {"value": value, "header": header, "format": fmt, "hosts": ["127.0.0.1"]}


async def test_secrets_never_appear_in_outputs(make_worker, server, base, caplog):
    caplog.set_level(logging.DEBUG)
    worker = make_worker(
        allow=LOCAL,
        secrets={"api": bound("tok-0123456789", fmt="Bearer {value}")},
        secret_headers=["X-Signature"],
    )
    server.route(
        "/echo",
        lambda r: Response(
            200,
            {"seen": r.headers},
            {"Set-Cookie": "session=abcdef0123456789", "X-Signature": "sig-from-server"},
        ),
    )
    config = {
        "url": base + "/echo",
        "secrets": ["api"],
        "headers": {
            "X-Api-Key": "key-9876543210",
            "X-Signature": "sig-2468013579",
            "X-Visible": "plain",
        },
    }
    output = await worker.handle(task(config))
    # The server got the real values...
    sent = server.requests[-1].headers
    assert sent["authorization"] == "Bearer tok-0123456789"
    assert sent["x-api-key"] == "key-9876543210"
    # ...and nothing the worker outputs or logs shows them.
    text = json.dumps(output) + caplog.text
    for secret in (
        "tok-0123456789",
        "key-9876543210",
        "sig-2468013579",
        "abcdef0123456789",
        "sig-from-server",
    ):
        assert secret not in text
    assert output["body"]["seen"]["x-visible"] == "plain"
    assert output["headers"]["set-cookie"] == "[redacted]"
    assert output["headers"]["x-signature"] == "[redacted]"


async def test_secrets_never_appear_in_errors(make_worker, server, base, caplog):
    caplog.set_level(logging.DEBUG)
    worker = make_worker(allow=LOCAL, secrets={"api": bound("tok-0123456789", "X-Key")})
    server.route(
        "/denied",
        lambda r: Response(401, f"bad {r.headers.get('authorization')} {r.headers['x-key']}"),
    )
    config = {
        "url": base + "/denied",
        "secrets": ["api"],
        "headers": {"Authorization": "Basic dXNlcjpodW50ZXIy"},
    }
    error = await failure(worker, config)
    assert "HTTP 401" in str(error)
    assert "bad [redacted] [redacted]" in str(error)
    for secret in ("tok-0123456789", "dXNlcjpodW50ZXIy"):
        assert secret not in str(error)
        assert secret not in caplog.text


async def test_an_unexpected_error_fails_the_node_without_secrets(make_worker, caplog):
    secret = "tok-0123456789"

    class BrokenResolver:
        async def resolve(self, host, port):
            raise RuntimeError(f"resolver bug while holding {secret}")

    caplog.set_level(logging.DEBUG)
    worker = make_worker(resolver=BrokenResolver(), secrets={"api": bound(secret)})
    error = await failure(worker, {"url": "https://api.example.com/"})
    assert "RuntimeError: resolver bug while holding [redacted]" in str(error)
    assert error.retryable is True
    assert "in resolve" in caplog.text  # the traceback's frames are logged...
    assert secret not in caplog.text  # ...but not the secret


async def test_secrets_are_kept_out_of_the_task_event(make_worker, server, base):
    """The config names the secret; the value comes from the worker's settings."""
    worker = make_worker(allow=LOCAL, secrets={"api": bound("tok-0123456789", "X-Api-Key")})
    server.route("/echo", echo)
    scheduled = task({"url": base + "/echo", "secrets": ["api"]})
    assert "tok-0123456789" not in json.dumps(scheduled.config)
    await worker.handle(scheduled)
    assert server.requests[-1].headers["x-api-key"] == "tok-0123456789"


# --- metrics ----------------------------------------------------------------------------


async def test_requests_are_measured_by_method_and_outcome(make_worker, server, base):
    registry = CollectorRegistry()
    worker = make_worker(allow=LOCAL, registry=registry)
    server.route("/ok", Response(200, "ok"))
    server.route("/down", Response(503, "down"))
    await worker.handle(task({"url": base + "/ok"}))
    await failure(worker, {"url": base + "/down", "retries": 1})
    await failure(worker, {"url": f"http://127.0.0.1:{unused_port()}/"})

    def count(method: str, outcome: str) -> float | None:
        return registry.get_sample_value(
            "aob_http_request_duration_seconds_count", {"method": method, "outcome": outcome}
        )

    assert count("GET", "2xx") == 1
    assert count("GET", "5xx") == 2
    assert count("GET", "connect_error") == 1
    assert registry.get_sample_value("aob_http_nodes_total", {"outcome": "completed"}) == 1
    assert registry.get_sample_value("aob_http_nodes_total", {"outcome": "failed"}) == 2


async def test_workers_share_one_connection_pool(worker, server, base):
    server.route("/ok", Response(200, "ok"))
    await asyncio.gather(*(worker.handle(task({"url": base + "/ok"})) for _ in range(10)))
    await asyncio.gather(*(worker.handle(task({"url": base + "/ok"})) for _ in range(10)))
    assert len(server.requests) == 20
    assert server.connections <= 10  # the second round reuses the first round's connections
