"""Per-node choice among the operator's LLM endpoints, overrides of limits; shared pools."""

from __future__ import annotations

import pytest

from aob.workers.agent.config import AgentDefaults, ConfigError, NamedEndpoint, agent_config
from aob.workers.agent.llm import Endpoint, LlmClients

DEFAULTS = AgentDefaults(
    base_url="http://llm.internal/v1",
    model="small",
    api_key="k0",
    max_rounds=10,
    max_tokens=1000,
    endpoints={
        "team-a": NamedEndpoint("https://a.example/v1", "ka", ("big", "huge"), frozenset({"acme"})),
        "shared": NamedEndpoint("https://shared.example/v1/", "ks", (), frozenset({"*"})),
    },
)


def test_nodes_inherit_the_default_endpoint_and_may_override_limits():
    inherited = agent_config({"prompt": "p"}, DEFAULTS)
    assert inherited.endpoint == Endpoint("http://llm.internal/v1", "small", "k0", 3, 60.0)
    assert not inherited.endpoint.guarded
    assert (inherited.max_rounds, inherited.max_tokens) == (10, 1000)
    own = agent_config(
        {
            "prompt": "p",
            "model": "big",
            "max_rounds": 2,
            "max_tokens": 50,
            "max_wall_ms": 5,
            "max_retries": 0,
        },
        DEFAULTS,
    )
    assert own.endpoint == Endpoint("http://llm.internal/v1", "big", "k0", 0, 60.0)
    assert (own.max_rounds, own.max_tokens, own.max_wall_ms) == (2, 50, 5)


@pytest.mark.parametrize(
    ("field", "ceiling"), [("max_rounds", 10), ("max_tokens", 1000), ("max_wall_ms", 300_000)]
)
def test_a_node_may_lower_the_deployments_limits_but_not_raise_them(field, ceiling):
    assert getattr(agent_config({"prompt": "p", field: ceiling}, DEFAULTS), field) == ceiling
    with pytest.raises(ConfigError) as raised:
        agent_config({"prompt": "p", field: ceiling + 1}, DEFAULTS)
    assert str(raised.value) == (
        f"config.{field}: {ceiling + 1} is over this deployment's AOB_LLM_{field.upper()}"
        f" ({ceiling}); a node may only lower it"
    )


def test_a_named_endpoint_brings_its_own_key_and_models_and_is_guarded():
    named = agent_config({"prompt": "p", "endpoint": "team-a"}, DEFAULTS, "acme")
    assert named.endpoint == Endpoint(
        "https://a.example/v1", "big", "ka", 3, 60.0, guarded=True, name="team-a"
    )
    huge = agent_config({"prompt": "p", "endpoint": "team-a", "model": "huge"}, DEFAULTS, "acme")
    assert huge.endpoint.model == "huge"
    shared = agent_config({"prompt": "p", "endpoint": "shared"}, DEFAULTS, "anyone")
    assert (shared.endpoint.api_key, shared.endpoint.model) == ("ks", "small")


def test_a_base_url_is_accepted_only_as_a_configured_endpoints_own():
    by_url = agent_config({"prompt": "p", "base_url": "https://a.example/v1/"}, DEFAULTS, "acme")
    assert (by_url.endpoint.name, by_url.endpoint.api_key) == ("team-a", "ka")
    default = agent_config({"prompt": "p", "base_url": "http://llm.internal/v1"}, DEFAULTS)
    assert (default.endpoint.name, default.endpoint.api_key) == ("default", "k0")


@pytest.mark.parametrize(
    ("config", "tenant", "message"),
    [
        (
            {"base_url": "http://[::1]:9/v1"},
            "default",
            "config.base_url: only LLM endpoints the operator configured may be used",
        ),
        (
            {"base_url": "https://a.example/v1"},
            "other",
            "config.base_url: only LLM endpoints the operator configured may be used",
        ),
        (
            {"endpoint": "team-a"},
            "other",
            "config.endpoint: no LLM endpoint named 'team-a' for tenant 'other';"
            " configured for it: default, shared",
        ),
        ({"endpoint": "nope"}, "acme", "no LLM endpoint named 'nope'"),
        (
            {"endpoint": "team-a", "model": "small"},
            "acme",
            "config.model: endpoint 'team-a' serves only big, huge, not 'small'",
        ),
        ({"endpoint": "shared", "base_url": "https://a.example/v1"}, "acme", "not both"),
        ({"credentials": "team-a"}, "acme", "config.credentials: LLM keys belong to endpoints"),
    ],
)
def test_unconfigured_or_foreign_endpoints_are_refused(config, tenant, message):
    with pytest.raises(ConfigError) as caught:
        agent_config({"prompt": "p", **config}, DEFAULTS, tenant)
    assert message in str(caught.value)
    for key in ("k0", "ka", "ks"):
        assert key not in str(caught.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"prompt": ""}, "config.prompt"),
        ({"prompt": "p", "api_key": "sk-..."}, "config.api_key: Extra inputs are not permitted"),
        ({"prompt": "p", "tools": ["rm_rf"]}, "config.tools.0"),
        ("just text", "agent node needs a config object"),
    ],
)
def test_bad_node_config_is_refused(config, message):
    with pytest.raises(ConfigError) as caught:
        agent_config(config, DEFAULTS)
    assert message in str(caught.value)


def test_no_endpoint_anywhere_is_refused():
    with pytest.raises(ConfigError, match="set AOB_LLM_BASE_URL"):
        agent_config({"prompt": "p"}, AgentDefaults())


async def test_every_endpoint_shares_one_connection_pool():
    clients = LlmClients()
    try:
        first = clients.client(Endpoint("http://a/v1", "m", "k"))
        second = clients.client(Endpoint("http://b/v1", "m", "k", max_retries=0))
        assert first is not second
        assert first.max_retries == 3
        assert second.max_retries == 0
        assert first._client is second._client is clients.http
        assert clients.client(Endpoint("http://a/v1", "other-model", "k")) is first
        guarded = clients.client(Endpoint("http://c/v1", "m", "k", guarded=True))
        also = clients.client(Endpoint("http://d/v1", "m", "k2", guarded=True))
        assert guarded._client is also._client is clients.guarded_http
        assert clients.guarded_http is not clients.http
    finally:
        await clients.aclose()
