"""An http node's config: templates over the run context, validation, the request built."""

from __future__ import annotations

import json
import re

import pytest

from aob.workers.http.config import ConfigError, build_request, render
from aob.workers.http.secrets import SecretBindings
from aob.workers.http.settings import HttpWorkerSettings, SecretBinding

CONTEXT = {
    "inputs": {"id": 7, "name": "Ada"},
    "nodes": {"user": {"tags": ["a", "b"], "email": None}},
    "iteration": 2,
}
SETTINGS = HttpWorkerSettings(_env_file=None)  # type: ignore[call-arg]


async def test_a_whole_value_template_keeps_the_json_type():
    assert await render("{{ .inputs.id }}", CONTEXT) == 7
    assert await render("{{ .nodes.user }}", CONTEXT) == {"tags": ["a", "b"], "email": None}
    assert await render("{{ .nodes.user.email }}", CONTEXT) is None


async def test_templates_inside_text_become_text():
    assert await render("/users/{{ .inputs.id }}/{{ .inputs.name }}", CONTEXT) == "/users/7/Ada"
    assert await render("tags={{ .nodes.user.tags }}", CONTEXT) == 'tags=["a","b"]'
    assert await render("mail:{{ .nodes.user.email }}", CONTEXT) == "mail:"
    assert await render(" {{ .iteration }}", CONTEXT) == " 2"


async def test_templates_are_found_anywhere_in_the_config():
    config = {"a": ["{{ .inputs.id }}", {"b": "x{{ .iteration }}"}], "n": 1, "t": True}
    assert await render(config, CONTEXT) == {"a": [7, {"b": "x2"}], "n": 1, "t": True}


async def test_a_literal_double_brace_can_be_written_as_a_template():
    assert await render('{{ "{{" }} name }}', CONTEXT) == "{{ name }}"


async def test_template_errors_say_where():
    with pytest.raises(ConfigError, match=r"config\.headers\.X: template"):
        await render({"headers": {"X": "{{ .inputs | bad_function }}"}}, CONTEXT, "config")


async def test_the_request_is_built_from_the_rendered_config():
    spec = await build_request(
        {
            "method": "post",
            "url": "https://api.example.com/users/{{ .inputs.id }}?v=1#section",
            "query": {"tag": "{{ .nodes.user.tags }}", "skip": None, "n": 2.5},
            "headers": {"X-Trace": "t-{{ .inputs.id }}"},
            "secrets": ["github"],
            "body": {"name": "{{ .inputs.name }}"},
            "timeout_ms": 1500,
            "retries": {"max": 2, "backoff_ms": 50, "non_idempotent": True},
            "expect_status": [200, "3xx"],
        },
        CONTEXT,
        SETTINGS,
    )
    assert spec.method == "POST"
    assert spec.url == "https://api.example.com/users/7?v=1&tag=a&tag=b&n=2.5"
    assert ("X-Trace", "t-7") in spec.headers
    assert spec.secrets == ("github",)  # names only: the transport adds values
    assert ("content-type", "application/json") in spec.headers
    assert json.loads(spec.body or b"") == {"name": "Ada"}
    assert spec.timeout_s == 1.5
    assert (spec.retry.max_retries, spec.retry.backoff_s) == (2, 0.05)
    assert spec.retry_after_sending
    assert 200 in spec.expect
    assert 302 in spec.expect
    assert 201 not in spec.expect


async def test_defaults():
    spec = await build_request({"url": "https://example.com/"}, CONTEXT, SETTINGS)
    assert spec.method == "GET"
    assert spec.body is None
    assert spec.timeout_s == SETTINGS.timeout_ms / 1000
    assert spec.max_response_bytes == SETTINGS.max_response_bytes
    assert spec.retry.max_retries == 0
    assert 204 in spec.expect
    assert 404 not in spec.expect
    assert spec.follow_redirects


@pytest.mark.parametrize(
    ("method", "retried"),
    [
        ("GET", True),
        ("HEAD", True),
        ("PUT", True),
        ("DELETE", True),
        ("OPTIONS", True),
        ("POST", False),
        ("PATCH", False),
    ],
)
async def test_only_idempotent_methods_are_sent_again_by_default(method, retried):
    config = {"url": "https://example.com/", "method": method}
    spec = await build_request(config, CONTEXT, SETTINGS)
    assert spec.retry_after_sending is retried


async def test_validation_errors_do_not_echo_values():
    with pytest.raises(ConfigError) as caught:
        await build_request(
            {"url": "https://example.com/", "headers": {"X": ["s3cr3t-value"]}}, CONTEXT, SETTINGS
        )
    assert "config.headers.X" in str(caught.value)
    assert "s3cr3t-value" not in str(caught.value)


@pytest.mark.parametrize(
    "template",
    [
        "{{ .secrets }}",
        "{{ .secrets.github }}",
        "Bearer {{ .secrets | tojson | @base64 }}",
        '{{ .["secrets"] | keys }}',
        '{{ ."secrets".x }}',
        "x{{ (.secrets | to_entries)[0].value }}",
    ],
)
@pytest.mark.parametrize("field", ["url", "headers", "body", "expect_status", "query"])
async def test_templates_reading_secrets_are_refused_with_a_pointer_to_bindings(field, template):
    values = {
        "url": template,
        "headers": {"X": template},
        "body": {"a": [template]},
        "expect_status": [template],
        "query": {"k": template},
    }
    config = {"url": "https://example.com/", field: values[field]}
    with pytest.raises(ConfigError) as caught:
        await build_request(config, CONTEXT, SETTINGS)
    message = str(caught.value)
    assert message.startswith(f"config.{field}")
    assert "templates cannot read secrets" in message
    assert "AOB_HTTP_SECRETS" in message
    assert "config.secrets" in message


async def test_a_field_named_secrets_under_inputs_is_ordinary_data():
    context = {"inputs": {"secrets": "public"}}
    spec = await build_request(
        {"url": "https://example.com/{{ .inputs.secrets }}"}, context, SETTINGS
    )
    assert spec.url == "https://example.com/public"


def test_settings_read_lists_and_bindings_from_the_environment(monkeypatch):
    monkeypatch.setenv("AOB_HTTP_ALLOW", "127.0.0.1, 10.1.0.0/16,svc.internal,api.local:9000")
    monkeypatch.setenv("AOB_HTTP_PORTS", '["443", "9000-9100"]')
    monkeypatch.setenv(
        "AOB_HTTP_SECRETS",
        '{"github": {"value": "ghp-123456", "format": "Bearer {value}",'
        ' "hosts": ["api.github.com"], "tenants": ["acme"]}}',
    )
    settings = HttpWorkerSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.allow == ["127.0.0.1", "10.1.0.0/16", "svc.internal", "api.local:9000"]
    github = settings.secrets["github"]
    assert github.value.get_secret_value() == "ghp-123456"
    assert (github.header, github.hosts, github.tenants) == (
        "Authorization",
        ["api.github.com"],
        ["acme"],
    )
    assert "ghp-123456" not in repr(settings)
    policy = settings.guard_policy()
    assert policy.ports == ((443, 443), (9000, 9100))
    assert policy.allow_hosts == frozenset({"svc.internal"})
    assert policy.allow_endpoints == frozenset({("api.local", 9000)})


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        ('"ghp-123456"', "Input should be a valid dictionary"),
        ('{"value": "v"}', "hosts"),
        ('{"value": "v", "hosts": []}', "hosts"),
        ('{"value": "v", "hosts": ["a.com"], "format": "Bearer"}', "{value}"),
    ],
)
def test_an_unbound_secret_is_refused_at_startup(monkeypatch, binding, message):
    monkeypatch.setenv("AOB_HTTP_SECRETS", f'{{"github": {binding}}}')
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        HttpWorkerSettings(_env_file=None)  # type: ignore[call-arg]
    assert "ghp-123456" not in str(caught.value)


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        ({"hosts": ["a b"]}, "AOB_HTTP_SECRETS.github.hosts: bad host"),
        ({"hosts": ["a.com:0"]}, "AOB_HTTP_SECRETS.github.hosts: bad port"),
        ({"hosts": ["a.com"], "header": "Host"}, "AOB_HTTP_SECRETS.github.header"),
        ({"hosts": ["a.com"], "format": "x\r\n{value}"}, "without line breaks"),
    ],
)
def test_a_bad_binding_is_refused_when_the_worker_starts(binding, message):
    settings = HttpWorkerSettings(  # type: ignore[call-arg]
        _env_file=None,
        secrets={"github": SecretBinding.model_validate({"value": "ghp-123456", **binding})},
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        SecretBindings(settings.secrets)


def test_a_bad_allow_entry_is_reported_at_startup(monkeypatch):
    monkeypatch.setenv("AOB_HTTP_ALLOW", "not a host")
    with pytest.raises(ValueError, match="bad host in configuration 'not a host'"):
        HttpWorkerSettings(_env_file=None).guard_policy()  # type: ignore[call-arg]
