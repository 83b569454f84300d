"""LLM access: the official openai SDK against any OpenAI-compatible endpoint.

One `httpx2.AsyncClient` (one connection pool) is shared by every endpoint's
`AsyncOpenAI` client, so keep-alive connections are reused across nodes. The SDK
retries 429s, 408/409 and 5xx (and connection errors) itself, with exponential
backoff and jitter, honouring `retry-after(-ms)`; `max_retries` bounds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletion


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to call a model: one per deployment, overridable per node."""

    base_url: str
    model: str
    api_key: str
    max_retries: int = 3
    timeout_s: float = 60.0


@dataclass(slots=True)
class Usage:
    """Token counts summed over an agent's LLM calls (the responses' usage blocks)."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0

    def add(self, completion: ChatCompletion) -> None:
        self.llm_calls += 1
        usage = completion.usage
        if usage is None:
            return
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.total_tokens += usage.total_tokens
        details = usage.prompt_tokens_details
        if details is not None and details.cached_tokens:
            self.cached_tokens += details.cached_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "llm_calls": self.llm_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
        }


@dataclass
class LlmClients:
    """AsyncOpenAI clients per endpoint over one shared connection pool. Close with `aclose`."""

    max_connections: int = 100
    max_keepalive_connections: int = 20
    _http: httpx2.AsyncClient | None = None
    _clients: dict[tuple[str, str, int, float], openai.AsyncOpenAI] = field(default_factory=dict)

    @property
    def http(self) -> httpx2.AsyncClient:
        if self._http is None:
            limits = httpx2.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_keepalive_connections,
            )
            self._http = openai.DefaultAsyncHttpxClient(limits=limits)
        return self._http

    def client(self, endpoint: Endpoint) -> openai.AsyncOpenAI:
        key = (endpoint.base_url, endpoint.api_key, endpoint.max_retries, endpoint.timeout_s)
        client = self._clients.get(key)
        if client is None:
            client = openai.AsyncOpenAI(
                base_url=endpoint.base_url,
                api_key=endpoint.api_key or "not-needed",  # local endpoints take any key
                max_retries=endpoint.max_retries,
                timeout=endpoint.timeout_s,
                http_client=self.http,
            )
            self._clients[key] = client
        return client

    async def complete(
        self,
        endpoint: Endpoint,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        max_completion_tokens: int | None = None,
    ) -> ChatCompletion:
        """One chat completion with function calling (retried by the SDK)."""
        extra: dict[str, Any] = {}
        if max_completion_tokens is not None:
            extra["max_completion_tokens"] = max_completion_tokens
        if tools:
            extra["tools"] = tools
        completion: ChatCompletion = await self.client(endpoint).chat.completions.create(
            model=endpoint.model,
            messages=messages,  # type: ignore[arg-type]  # plain dicts, as the API takes them
            **extra,
        )
        return completion

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        self._clients.clear()
