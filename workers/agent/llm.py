"""LLM access: the official openai SDK against any OpenAI-compatible endpoint.

One `httpx2.AsyncClient` (one connection pool) is shared by the default endpoint's
`AsyncOpenAI` clients, so keep-alive connections are reused across nodes; the
operator's other endpoints (`guarded`) share a second pool whose every connection the
HTTP worker's SSRF guard checked and pinned (`aob.workers.http.outbound`). The SDK
retries 429s, 408/409 and 5xx (and connection errors) itself, with exponential
backoff and jitter, honouring `retry-after(-ms)`; `max_retries` bounds it.

Every completion is streamed (`stream=True`, usage asked for in the last chunk) and
assembled into the `ChatCompletion` the runner always had (content, tool calls,
usage), so what reaches the durable log does not depend on streaming. As chunks
arrive, their text and tool-call fragments go to the attempt's `LiveOutput`, which
coalesces them into bounded deltas for the short-retention stream
(`aob.events.log.deltas`): see docs/streaming.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from aob.events.log.deltas import Delta, DeltaSink
from aob.events.tracing import Scope, instrument, span
from aob.workers.http.guard import GuardPolicy
from aob.workers.http.outbound import guarded_addresses, guarded_httpx2_client
from aob.workers.http.resolver import Resolver, SystemResolver

log = logging.getLogger(__name__)


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
            instrument(self._http)  # its requests traced, tracing on
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
            instrument(self._guarded)
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
        live: LiveOutput | None = None,
    ) -> ChatCompletion:
        """One chat completion with function calling (retried by the SDK), streamed:
        fragments go to `live` as they arrive; the assembled completion is returned."""
        extra: dict[str, Any] = {}
        if max_completion_tokens is not None:
            extra["max_completion_tokens"] = max_completion_tokens
        if tools:
            extra["tools"] = tools
        await self.check(endpoint)
        # A GenAI client span (OpenTelemetry semantic conventions), tracing on.
        with span(f"chat {endpoint.model}") as call:
            call.set("gen_ai.operation.name", "chat")
            call.set("gen_ai.provider.name", "openai")
            call.set("gen_ai.request.model", endpoint.model)
            # Plain dicts, as the API takes them (not the SDK's TypedDicts).
            stream = await self.client(endpoint).chat.completions.create(  # type: ignore[call-overload]
                model=endpoint.model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **extra,
            )
            assembly = _Assembly()
            async with stream:
                async for chunk in _broken_as_connection_errors(stream, stream.response.request):
                    assembly.add(chunk)
                    if live is not None:
                        await live.chunk(chunk)
            if live is not None:
                await live.call_ended(assembly.usage)
            completion = assembly.completion(endpoint.model)
            _describe_call(call, completion)
        return completion

    async def aclose(self) -> None:
        for http in (self._http, self._guarded):
            if http is not None:
                await http.aclose()
        self._http = self._guarded = None
        self._clients.clear()


def _describe_call(call: Scope, completion: ChatCompletion) -> None:
    """The completion's usage and finish reasons on its span (a no-op, tracing off)."""
    if call.span_id is None:
        return
    usage = completion.usage
    if usage is not None:
        call.set("gen_ai.usage.input_tokens", usage.prompt_tokens)
        call.set("gen_ai.usage.output_tokens", usage.completion_tokens)
    call.set("gen_ai.response.finish_reasons", [str(c.finish_reason) for c in completion.choices])


async def _broken_as_connection_errors(
    chunks: AsyncIterator[ChatCompletionChunk], request: httpx2.Request
) -> AsyncIterator[ChatCompletionChunk]:
    """The chunks; a stream that breaks after its response began (the connection
    dropped, or the provider sent an `error` event) raises `APIConnectionError`, as a
    request that never got through would: the runner retries it per the node's
    policy instead of taking it for a bug."""
    try:
        async for chunk in chunks:
            yield chunk
    except (httpx2.TransportError, openai.APIError) as error:
        if isinstance(error, openai.APIStatusError | openai.APIConnectionError):
            raise
        raise openai.APIConnectionError(
            message=f"the response stream broke: {error}", request=request
        ) from error


@dataclass
class _ToolCall:
    id: str = ""
    type: str = "function"
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Assembly:
    """A streamed completion put back together: what the non-streamed response held."""

    id: str = ""
    created: int = 0
    model: str | None = None
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    has_content: bool = False
    calls: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    chunks: int = 0

    def add(self, chunk: ChatCompletionChunk) -> None:
        self.chunks += 1
        self.id = self.id or chunk.id
        self.created = self.created or chunk.created
        self.model = self.model or chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage.model_dump(exclude_none=True)
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # one choice asked for (n=1)
            delta = choice.delta
            if delta.content is not None:
                self.has_content = True
                self.content.append(delta.content)
            if delta.refusal:
                self.refusal.append(delta.refusal)
            for piece in delta.tool_calls or ():
                call = self.calls.setdefault(piece.index, _ToolCall())
                call.id = piece.id or call.id
                call.type = piece.type or call.type
                if piece.function is not None:
                    call.name += piece.function.name or ""
                    call.arguments.append(piece.function.arguments or "")
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason

    def completion(self, model: str) -> ChatCompletion:
        if not self.chunks:
            raise openai.APIError("the LLM's response stream was empty", _EMPTY_REQUEST, body=None)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.content) if self.has_content else None,
        }
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": call.type,
                    "function": {"name": call.name, "arguments": "".join(call.arguments)},
                }
                for _, call in sorted(self.calls.items())
            ]
        return ChatCompletion.model_validate(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model or model,
                "choices": [
                    {"index": 0, "message": message, "finish_reason": self.finish_reason or "stop"}
                ],
                "usage": self.usage,
            }
        )


_EMPTY_REQUEST = httpx2.Request("POST", "http://llm.invalid/v1/chat/completions")


@dataclass(frozen=True, slots=True)
class LiveBounds:
    """How an attempt's deltas are cut (settings `AOB_DELTA_*`)."""

    delta_bytes: int = 4096  # largest text in one delta
    flush_ms: int = 50  # fragments arriving within this go out as one delta
    attempt_bytes: int = 4 * 1024 * 1024  # streamed per attempt, then `truncated`


@dataclass
class LivePublisher:
    """Makes each agent attempt's `LiveOutput` over one sink."""

    sink: DeltaSink
    bounds: LiveBounds = field(default_factory=LiveBounds)

    def attempt(self, run_id: str, node_id: str, iteration: int, attempt: int) -> LiveOutput:
        return LiveOutput(self.sink, (run_id, node_id, iteration, attempt), self.bounds)


class LiveOutput:
    """One agent attempt's live output: coalesces fragments into bounded deltas.

    Text fragments that arrive within `flush_ms` become one delta (a flood of
    one-character chunks costs a few deltas a second, not one each), none longer than
    `delta_bytes`; after `attempt_bytes` the attempt publishes one `truncated` delta
    and nothing more. Publishing is best effort: a failure is logged and never fails
    the node (the durable log has the outcome).
    """

    def __init__(self, sink: DeltaSink, key: tuple[str, str, int, int], bounds: LiveBounds) -> None:
        self.sink = sink
        self.key = key
        self.bounds = bounds
        self.published_bytes = 0
        self.truncated = False
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._pending_bytes = 0
        self._last_flush = 0.0
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._background: asyncio.Future[None] | None = None  # a timer's flush

    async def chunk(self, chunk: ChatCompletionChunk) -> None:
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            if choice.delta.content:
                self._text(choice.delta.content)
            for piece in choice.delta.tool_calls or ():
                function = piece.function
                self._tool_call(
                    piece.index,
                    piece.id,
                    function.name if function else None,
                    (function.arguments or "") if function else "",
                )
        await self._flush_if_due()

    async def call_ended(self, usage: dict[str, Any] | None) -> None:
        """An LLM call ended: its usage goes out, with whatever is pending."""
        self._add("usage", {"usage": usage or {}})
        await self.flush()

    async def tool_result(self, name: str, result: str, elapsed_s: float) -> None:
        limit = self.bounds.delta_bytes
        self._add(
            "tool_result",
            {
                "name": name[:200],
                "result": _cut_utf8(result, limit),
                "elapsed_ms": round(elapsed_s * 1000, 3),
            },
        )
        await self.flush()

    def _text(self, text: str) -> None:
        if self._pending and self._pending[-1][0] == "text":
            self._pending[-1][1]["text"] += text
        else:
            self._pending.append(("text", {"text": text}))
        self._pending_bytes += len(text.encode("utf-8"))

    def _tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> None:
        last = self._pending[-1] if self._pending else None
        if last is not None and last[0] == "tool_call" and last[1]["index"] == index:
            last[1]["arguments"] += arguments
            last[1]["id"] = last[1]["id"] or call_id
            last[1]["name"] = last[1]["name"] or name
        else:
            self._pending.append(
                ("tool_call", {"index": index, "id": call_id, "name": name, "arguments": arguments})
            )
        self._pending_bytes += len(arguments.encode("utf-8"))

    def _add(self, kind: str, data: dict[str, Any]) -> None:
        self._pending.append((kind, data))

    async def _flush_if_due(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.bounds.flush_ms / 1000 - (loop.time() - self._last_flush)
        if wait <= 0 or self._pending_bytes >= self.bounds.delta_bytes:
            await self.flush()
        elif self._pending and self._timer is None:
            # The next chunk may be long in coming: what is pending goes out anyway.
            self._timer = loop.call_later(wait, self._flush_later)

    def _flush_later(self) -> None:
        self._timer = None
        self._background = asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        """Publish what is pending, in order (the lock keeps flushes in call order)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self._lock:
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            self._last_flush = asyncio.get_running_loop().time()
            deltas = [d for kind, data in pending for d in self._cut(kind, data)]
            if not deltas:
                return
            try:
                await self.sink.publish(deltas)
            except Exception:  # the live view is a convenience: never fail the node for it
                log.warning(
                    "cannot publish live output of node %s of run %s",
                    self.key[1],
                    self.key[0],
                    exc_info=True,
                )

    def _cut(self, kind: str, data: dict[str, Any]) -> list[Delta]:
        """`data` as deltas within the bounds: long text in pieces, nothing past the
        attempt's limit (one `truncated` instead)."""
        if self.truncated:
            return []
        field_name = {"text": "text", "tool_call": "arguments"}.get(kind)
        pieces = [data]
        if field_name is not None:
            pieces = [
                {**data, field_name: part}
                for part in _pieces(data[field_name], self.bounds.delta_bytes)
            ]
        deltas = []
        for piece in pieces:
            size = len(str(piece).encode("utf-8"))
            if self.published_bytes + size > self.bounds.attempt_bytes:
                self.truncated = True
                deltas.append(self._delta("truncated", {"after_bytes": self.published_bytes}))
                break
            self.published_bytes += size
            deltas.append(self._delta(kind, piece))
        return deltas

    def _delta(self, kind: str, data: dict[str, Any]) -> Delta:
        run_id, node_id, iteration, attempt = self.key
        return Delta(run_id, node_id, iteration, attempt, kind, data)


def _pieces(text: str, limit: int) -> list[str]:
    """`text` in pieces of at most `limit` UTF-8 bytes (at least one, maybe empty)."""
    if len(text.encode("utf-8")) <= limit:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + limit)  # characters: at least as many bytes
        while len(text[start:end].encode("utf-8")) > limit:
            end = start + max(1, (end - start) // 2)
        pieces.append(text[start:end])
        start = end
    return pieces


def _cut_utf8(text: str, limit: int) -> str:
    return text if len(text.encode("utf-8")) <= limit else _pieces(text, limit)[0] + "…"
