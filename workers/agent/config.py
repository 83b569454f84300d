"""An agent node's configuration: the deployment's defaults, overridden per node.

Node config fields (only `prompt` is required):

    prompt          the task; `{{ jq }}` templates over the node's context are filled in
    instructions    extra guidance, after the stable system prompt
    model, base_url the LLM endpoint (default: the deployment's)
    credentials     name of an API key the deployment holds (AOB_LLM_API_KEYS); keys
                    never appear in definitions or events
    max_rounds      tool-call rounds before the node fails
    max_tokens      token budget (prompt + completion, all calls) before the node fails
    max_wall_ms     wall time before the node fails
    max_retries     SDK retries of one call (429, 5xx, connection errors)
    tools           the tools this node may use (default: all five)
    output          "text" (default) or "json": the final answer must parse as JSON
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aob.events.types import Json
from aob.workers.agent.llm import Endpoint
from aob.workers.agent.prompt import TOOL_NAMES

ToolName = Literal[
    "execute_pipeline", "patch_workflow", "search_tools", "openapi_action", "delegate_to_agent"
]


class ConfigError(ValueError):
    """The node's config is invalid: retrying cannot help."""


@dataclass(frozen=True, slots=True)
class AgentDefaults:
    """The deployment's LLM endpoint and limits (platform settings `AOB_LLM_*`)."""

    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key: str = ""
    api_keys: Mapping[str, str] = field(default_factory=dict)
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


class _NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1)
    instructions: str = ""
    model: str | None = None
    base_url: str | None = None
    credentials: str | None = None
    max_rounds: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_wall_ms: int | None = Field(default=None, ge=1)
    max_retries: int | None = Field(default=None, ge=0, le=10)
    tools: list[ToolName] | None = None
    output: Literal["text", "json"] = "text"
    delegation_depth: int = Field(default=0, ge=0)


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


def agent_config(config: Json, defaults: AgentDefaults) -> AgentConfig:
    """The node's config over the deployment's defaults. Raises ConfigError."""
    if not isinstance(config, dict):
        raise ConfigError("agent node needs a config object with at least a prompt")
    try:
        node = _NodeConfig.model_validate(config)
    except ValidationError as error:
        problems = [
            f"config.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in error.errors(include_input=False, include_url=False)
        ]
        raise ConfigError("; ".join(problems)) from None
    base_url = node.base_url or defaults.base_url
    if not base_url:
        raise ConfigError("no LLM endpoint: set AOB_LLM_BASE_URL or the node's config.base_url")
    api_key = defaults.api_key
    if node.credentials is not None:
        if node.credentials not in defaults.api_keys:
            raise ConfigError(f"config.credentials: no API key named {node.credentials!r}")
        api_key = defaults.api_keys[node.credentials]
    endpoint = Endpoint(
        base_url=base_url,
        model=node.model or defaults.model,
        api_key=api_key,
        max_retries=defaults.max_retries if node.max_retries is None else node.max_retries,
        timeout_s=defaults.timeout_ms / 1000,
    )
    return AgentConfig(
        prompt=node.prompt,
        instructions=node.instructions,
        endpoint=endpoint,
        max_rounds=defaults.max_rounds if node.max_rounds is None else node.max_rounds,
        max_tokens=node.max_tokens or defaults.max_tokens,
        max_wall_ms=node.max_wall_ms or defaults.max_wall_ms,
        tools=tuple(node.tools) if node.tools is not None else TOOL_NAMES,
        output=node.output,
        delegation_depth=node.delegation_depth,
    )
