"""An agent node's configuration: the deployment's defaults, overridden per node.

Node config fields (only `prompt` is required):

    prompt          the task; `{{ jq }}` templates over the node's context are filled in
                    (in the jq sandbox)
    instructions    extra guidance, after the stable system prompt
    endpoint        name of an LLM endpoint the operator configured (AOB_LLM_ENDPOINTS;
                    "default" is AOB_LLM_BASE_URL), each with its own key, models and
                    tenants; keys never appear in definitions or events
    base_url        accepted only when it is a configured endpoint's base_url (that
                    endpoint is then used); any other URL is refused
    model           the model (default: the endpoint's, else the deployment's)
    max_rounds      tool-call rounds before the node fails
    max_tokens      token budget (prompt + completion, all calls) before the node fails
    max_wall_ms     wall time before the node fails
                    (these three may lower the deployment's AOB_LLM_* limits, not
                    raise them: a higher value is a config error)
    max_retries     SDK retries of one call (429, 5xx, connection errors)
    tools           the tools this node may use (default: all five)
    output          "text" (default) or "json": the final answer must parse as JSON
    on_budget_exceeded
                    "fail" or "approval": what a run budget stops this node with
                    (default: the run budget's on_exceeded); see docs/budgets.md
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aob.events.types import Json
from aob.projections.usage.pricing import ModelPrice
from aob.workers.agent.llm import Endpoint
from aob.workers.agent.prompt import TOOL_NAMES

ToolName = Literal[
    "execute_pipeline", "patch_workflow", "search_tools", "openapi_action", "delegate_to_agent"
]


class ConfigError(ValueError):
    """The node's config is invalid: retrying cannot help."""


DEFAULT_ENDPOINT = "default"
DEFAULT_TENANT = "default"
ALL_TENANTS = "*"


@dataclass(frozen=True, slots=True)
class NamedEndpoint:
    """An LLM endpoint the operator configured besides the default (AOB_LLM_ENDPOINTS).
    Its traffic goes through the SSRF guard."""

    base_url: str
    api_key: str = ""
    models: tuple[str, ...] = ()  # the models nodes may ask for; empty: any
    tenants: frozenset[str] = frozenset({DEFAULT_TENANT})  # "*": every tenant

    def allows(self, tenant: str) -> bool:
        return ALL_TENANTS in self.tenants or tenant in self.tenants


@dataclass(frozen=True, slots=True)
class AgentDefaults:
    """The deployment's LLM endpoints and limits (platform settings `AOB_LLM_*`)."""

    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key: str = ""
    endpoints: Mapping[str, NamedEndpoint] = field(default_factory=dict)
    max_retries: int = 3
    timeout_ms: int = 60_000
    max_rounds: int = 10
    max_tokens: int = 100_000
    max_wall_ms: int = 300_000
    max_patch_attempts: int = 3
    max_delegation_depth: int = 2
    # Outputs larger than this (as JSON) go to the blob store; the event carries the ref.
    blob_threshold_bytes: int = 64 * 1024
    # Tool results shown to the model are cut at this many characters.
    max_tool_result_chars: int = 16_000
    # USD per million tokens by model (AOB_MODEL_PRICES): usage events record the cost.
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)


class _NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1)
    instructions: str = ""
    model: str | None = None
    endpoint: str | None = Field(default=None, min_length=1)
    base_url: str | None = None
    max_rounds: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_wall_ms: int | None = Field(default=None, ge=1)
    max_retries: int | None = Field(default=None, ge=0, le=10)
    tools: list[ToolName] | None = None
    output: Literal["text", "json"] = "text"
    delegation_depth: int = Field(default=0, ge=0)
    on_budget_exceeded: Literal["fail", "approval"] | None = None


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """One node's effective configuration."""

    prompt: str
    instructions: str
    endpoint: Endpoint
    max_rounds: int
    max_tokens: int
    max_wall_ms: int
    tools: tuple[str, ...]
    output: str
    delegation_depth: int
    on_budget_exceeded: str | None = None  # None: as the run budget says


def agent_config(
    config: Json, defaults: AgentDefaults, tenant: str = DEFAULT_TENANT
) -> AgentConfig:
    """The node's config over the deployment's defaults, for a run of `tenant`.
    Raises ConfigError."""
    if not isinstance(config, dict):
        raise ConfigError("agent node needs a config object with at least a prompt")
    if "credentials" in config:
        raise ConfigError(
            "config.credentials: LLM keys belong to endpoints now; name an endpoint the"
            " operator configured in config.endpoint (AOB_LLM_ENDPOINTS)"
        )
    try:
        node = _NodeConfig.model_validate(config)
    except ValidationError as error:
        problems = [
            f"config.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in error.errors(include_input=False, include_url=False)
        ]
        raise ConfigError("; ".join(problems)) from None
    endpoint = _endpoint(node, defaults, tenant)
    return AgentConfig(
        prompt=node.prompt,
        instructions=node.instructions,
        endpoint=endpoint,
        max_rounds=_at_most(node.max_rounds, defaults.max_rounds, "max_rounds"),
        max_tokens=_at_most(node.max_tokens, defaults.max_tokens, "max_tokens"),
        max_wall_ms=_at_most(node.max_wall_ms, defaults.max_wall_ms, "max_wall_ms"),
        tools=tuple(node.tools) if node.tools is not None else TOOL_NAMES,
        output=node.output,
        delegation_depth=node.delegation_depth,
        on_budget_exceeded=node.on_budget_exceeded,
    )


def _at_most(asked: int | None, ceiling: int, name: str) -> int:
    """A node's own limit, which may lower the deployment's (`AOB_LLM_<NAME>`), never
    raise it: the operator's bound holds whatever a tenant writes."""
    if asked is None:
        return ceiling
    if asked > ceiling:
        raise ConfigError(
            f"config.{name}: {asked} is over this deployment's AOB_LLM_{name.upper()}"
            f" ({ceiling}); a node may only lower it"
        )
    return asked


def _endpoint(node: _NodeConfig, defaults: AgentDefaults, tenant: str) -> Endpoint:
    """The configured endpoint the node names (by name or by its exact base_url)."""
    name = node.endpoint
    if node.base_url is not None:
        by_url = _name_of(node.base_url, defaults, tenant)
        if name is not None and name != by_url:
            raise ConfigError("config.base_url: give config.endpoint or config.base_url, not both")
        name = by_url
    max_retries = defaults.max_retries if node.max_retries is None else node.max_retries
    timeout_s = defaults.timeout_ms / 1000
    if name is None or name == DEFAULT_ENDPOINT:
        if not defaults.base_url:
            raise ConfigError(
                "no LLM endpoint: set AOB_LLM_BASE_URL, or name an endpoint the operator"
                " configured (config.endpoint, AOB_LLM_ENDPOINTS)"
            )
        model = node.model or defaults.model
        return Endpoint(defaults.base_url, model, defaults.api_key, max_retries, timeout_s)
    named = defaults.endpoints.get(name)
    if named is None or not named.allows(tenant):
        raise ConfigError(
            f"config.endpoint: no LLM endpoint named {name!r} for tenant {tenant!r};"
            f" configured for it: {', '.join(_names(defaults, tenant)) or 'none'}"
            " (the operator configures them in AOB_LLM_ENDPOINTS)"
        )
    model = node.model or (named.models[0] if named.models else defaults.model)
    if named.models and model not in named.models:
        raise ConfigError(
            f"config.model: endpoint {name!r} serves only {', '.join(named.models)}, not {model!r}"
        )
    return Endpoint(
        named.base_url, model, named.api_key, max_retries, timeout_s, guarded=True, name=name
    )


def _name_of(base_url: str, defaults: AgentDefaults, tenant: str) -> str:
    """The configured endpoint whose base_url this is; a free URL is refused (it would
    carry a key to wherever it points, past the SSRF guard)."""
    wanted = base_url.rstrip("/")
    if defaults.base_url and defaults.base_url.rstrip("/") == wanted:
        return DEFAULT_ENDPOINT
    for name, named in defaults.endpoints.items():
        if named.base_url.rstrip("/") == wanted and named.allows(tenant):
            return name
    raise ConfigError(
        "config.base_url: only LLM endpoints the operator configured may be used"
        " (AOB_LLM_BASE_URL, AOB_LLM_ENDPOINTS); name one in config.endpoint"
        f" (for tenant {tenant!r}: {', '.join(_names(defaults, tenant)) or 'none'})"
    )


def _names(defaults: AgentDefaults, tenant: str) -> list[str]:
    names = [DEFAULT_ENDPOINT] if defaults.base_url else []
    return names + sorted(n for n, e in defaults.endpoints.items() if e.allows(tenant))
