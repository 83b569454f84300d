"""An http node's config: templates over the run context, validation, the request built."""

from __future__ import annotations

import json

import pytest

from aob.workers.http.config import ConfigError, build_request, render
from aob.workers.http.settings import HttpWorkerSettings

CONTEXT = {
    "inputs": {"id": 7, "name": "Ada"},
    "nodes": {"user": {"tags": ["a", "b"], "email": None}},
    "iteration": 2,
    "secrets": {"token": "s3cr3t-value"},
}
SETTINGS = HttpWorkerSettings(_env_file=None)  # type: ignore[call-arg]


def test_a_whole_value_template_keeps_the_json_type():
    assert render("{{ .inputs.id }}", CONTEXT) == 7
    assert render("{{ .nodes.user }}", CONTEXT) == {"tags": ["a", "b"], "email": None}
    assert render("{{ .nodes.user.email }}", CONTEXT) is None


def test_templates_inside_text_become_text():
    assert render("/users/{{ .inputs.id }}/{{ .inputs.name }}", CONTEXT) == "/users/7/Ada"
    assert render("tags={{ .nodes.user.tags }}", CONTEXT) == 'tags=["a","b"]'
    assert render("mail:{{ .nodes.user.email }}", CONTEXT) == "mail:"
    assert render("Bearer {{ .secrets.token }}", CONTEXT) == "Bearer s3cr3t-value"
    assert render(" {{ .iteration }}", CONTEXT) == " 2"


def test_templates_are_found_anywhere_in_the_config():
    config = {"a": ["{{ .inputs.id }}", {"b": "x{{ .iteration }}"}], "n": 1, "t": True}
    assert render(config, CONTEXT) == {"a": [7, {"b": "x2"}], "n": 1, "t": True}


def test_a_literal_double_brace_can_be_written_as_a_template():
    assert render('{{ "{{" }} name }}', CONTEXT) == "{{ name }}"


def test_template_errors_say_where():
    with pytest.raises(ConfigError, match=r"config\.headers\.X: template"):
        render({"headers": {"X": "{{ .inputs | bad_function }}"}}, CONTEXT, "config")


def test_the_request_is_built_from_the_rendered_config():
    spec = build_request(
        {
            "method": "post",
            "url": "https://api.example.com/users/{{ .inputs.id }}?v=1#section",
            "query": {"tag": "{{ .nodes.user.tags }}", "skip": None, "n": 2.5},
            "headers": {"Authorization": "Bearer {{ .secrets.token }}"},
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
    assert ("Authorization", "Bearer s3cr3t-value") in spec.headers
    assert ("content-type", "application/json") in spec.headers
    assert json.loads(spec.body or b"") == {"name": "Ada"}
    assert spec.timeout_s == 1.5
    assert (spec.retry.max_retries, spec.retry.backoff_s) == (2, 0.05)
    assert spec.retry_after_sending
    assert 200 in spec.expect
    assert 302 in spec.expect
    assert 201 not in spec.expect


def test_defaults():
    spec = build_request({"url": "https://example.com/"}, CONTEXT, SETTINGS)
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
def test_only_idempotent_methods_are_sent_again_by_default(method, retried):
    spec = build_request({"url": "https://example.com/", "method": method}, CONTEXT, SETTINGS)
    assert spec.retry_after_sending is retried


def test_validation_errors_do_not_echo_values():
    with pytest.raises(ConfigError) as caught:
        build_request(
            {"url": "https://example.com/", "headers": {"X": ["s3cr3t-value"]}}, CONTEXT, SETTINGS
        )
    assert "config.headers.X" in str(caught.value)
    assert "s3cr3t-value" not in str(caught.value)


def test_settings_read_lists_from_the_environment(monkeypatch):
    monkeypatch.setenv("AOB_HTTP_ALLOW", "127.0.0.1, 10.1.0.0/16,svc.internal")
    monkeypatch.setenv("AOB_HTTP_PORTS", '["443", "9000-9100"]')
    monkeypatch.setenv("AOB_HTTP_SECRETS", '{"github": "ghp-123456"}')
    settings = HttpWorkerSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.allow == ["127.0.0.1", "10.1.0.0/16", "svc.internal"]
    assert settings.secrets["github"].get_secret_value() == "ghp-123456"
    assert "ghp-123456" not in repr(settings)
    policy = settings.guard_policy()
    assert policy.ports == ((443, 443), (9000, 9100))
    assert policy.allow_hosts == frozenset({"svc.internal"})


def test_a_bad_allow_entry_is_reported_at_startup(monkeypatch):
    monkeypatch.setenv("AOB_HTTP_ALLOW", "not a host")
    with pytest.raises(ValueError, match="bad host in configuration 'not a host'"):
        HttpWorkerSettings(_env_file=None).guard_policy()  # type: ignore[call-arg]
