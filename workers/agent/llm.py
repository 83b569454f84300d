"""LLM access: the official openai SDK against any OpenAI-compatible endpoint.

One `httpx2.AsyncClient` (one connection pool) is shared by the default endpoint's
`AsyncOpenAI` clients, so keep-alive connections are reused across nodes; the
operator's other endpoints (`guarded`) share a second pool whose every connection the
HTTP worker's SSRF guard checked and pinned (`aob.workers.http.outbound`). The SDK
retries 429s, 408/409 and 5xx (and connection errors) itself, with exponential
backoff and jitter, honouring `retry-after(-ms)`; `max_retries` bounds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletion

from aob.workers.http.guard import GuardPolicy
from aob.workers.http.outbound import guarded_addresses, guarded_httpx2_client
from aob.workers.http.resolver import Resolver, SystemResolver


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to call a model: the deployment's default or a configured one."""

    base_url: str
    model: str
    api_key: str
    max_retries: int = 3
    timeout_s: float = 60.0
    guarded: bool = False  # through the SSRF guard (every endpoint but the default)
    name: str = "default"


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
    """AsyncOpenAI clients per endpoint over shared connection pools (one for the default
    endpoint, one guarded for the others). Close with `aclose`."""

    max_connections: int = 100
    max_keepalive_connections: int = 20
    # The SSRF policy for guarded endpoints (the HTTP worker's; default: public only).
    guard: GuardPolicy = field(default_factory=GuardPolicy)
    resolver: Resolver = field(default_factory=SystemResolver)
    _http: httpx2.AsyncClient | None = None
    _guarded: httpx2.AsyncClient | None = None
    _clients: dict[tuple[str, str, int, float, bool], openai.AsyncOpenAI] = field(
        default_factory=dict
    )

    @property
    def http(self) -> httpx2.AsyncClient:
        if self._http is None:
            limits = httpx2.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_keepalive_connections,
            )
            self._http = openai.DefaultAsyncHttpxClient(limits=limits)
        return self._http

    @property
    def guarded_http(self) -> httpx2.AsyncClient:
        if self._guarded is None:
            self._guarded = guarded_httpx2_client(
                self.guard,
                resolver=self.resolver,
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_keepalive_connections,
            )
        return self._guarded

    async def check(self, endpoint: Endpoint) -> None:
        """Raises Blocked when the guard refuses a guarded endpoint (before the SDK, which
        would retry a refusal as a connection error); the transport checks again."""
        if endpoint.guarded:
            await guarded_addresses(endpoint.base_url, self.guard, self.resolver)

    def client(self, endpoint: Endpoint) -> openai.AsyncOpenAI:
        key = (
            endpoint.base_url,
            endpoint.api_key,
            endpoint.max_retries,
            endpoint.timeout_s,
            endpoint.guarded,
        )
        client = self._clients.get(key)
        if client is None:
            client = openai.AsyncOpenAI(
                base_url=endpoint.base_url,
                api_key=endpoint.api_key or "not-needed",  # local endpoints take any key
                max_retries=endpoint.max_retries,
                timeout=endpoint.timeout_s,
                http_client=self.guarded_http if endpoint.guarded else self.http,
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
        await self.check(endpoint)
        completion: ChatCompletion = await self.client(endpoint).chat.completions.create(
            model=endpoint.model,
            messages=messages,  # type: ignore[arg-type]  # plain dicts, as the API takes them
            **extra,
        )
        return completion

    async def aclose(self) -> None:
        for http in (self._http, self._guarded):
            if http is not None:
                await http.aclose()
        self._http = self._guarded = None
        self._clients.clear()
