"""Per-node overrides of the deployment's LLM endpoint and limits; one shared pool."""

from __future__ import annotations

import pytest

from aob.workers.agent.config import AgentDefaults, ConfigError, agent_config
from aob.workers.agent.llm import Endpoint, LlmClients

DEFAULTS = AgentDefaults(base_url="http://llm.internal/v1", model="small", api_key="k0",
                         api_keys={"team-a": "ka"}, max_rounds=10, max_tokens=1000)


def test_nodes_inherit_the_deployment_and_may_override_it():
    inherited = agent_config({"prompt": "p"}, DEFAULTS)
    assert inherited.endpoint == Endpoint("http://llm.internal/v1", "small", "k0", 3, 60.0)
    assert (inherited.max_rounds, inherited.max_tokens) == (10, 1000)
    own = agent_config({"prompt": "p", "model": "big", "base_url": "https://other/v1",
                        "credentials": "team-a", "max_rounds": 2, "max_tokens": 50,
                        "max_wall_ms": 5, "max_retries": 0}, DEFAULTS)
    assert own.endpoint == Endpoint("https://other/v1", "big", "ka", 0, 60.0)
    assert (own.max_rounds, own.max_tokens, own.max_wall_ms) == (2, 50, 5)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"prompt": "p", "credentials": "team-b"}, "config.credentials: no API key named 'team-b'"),
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
    finally:
        await clients.aclose()
