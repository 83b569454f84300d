"""A scripted OpenAI-compatible endpoint, for tests, benchmarks and offline demos.

    python -m aob.workers.agent.demo_llm --port 8808 [--script FILE]

serves `POST /v1/chat/completions` (and `GET /v1/models`) from a script instead of
a model, so a real agent (the real SDK, over real HTTP) runs without a provider.
Without `--script` it serves the script of the README's example
(`demo_script.json` beside this file).

A script (JSON or YAML) is a list of conversations:

    conversations:
      - match: "weather"            # substring of the request's non-system messages
        turns:                      # turn n answers a request with n assistant messages
          - tool_calls: [{name: execute_pipeline, arguments: {steps: [...]}}]
          - content: "It is sunny."
            usage: {prompt_tokens: 900, completion_tokens: 12}   # optional
            errors: [{status: 429}]  # optional: answered first, once each, in order
            delay_ms: 0
            # Streamed answers (the request asks `stream: true`) only:
            chunks: ["It ", "is ", "sunny."]  # the content's pieces (default: word by word)
            chunk_chars: 1          # or: pieces of this many characters
            chunk_delay_ms: 0       # a pause before each piece
            gate: weather           # each piece waits for a release of this gate
    default: {content: "I have no script for this."}

The first conversation whose `match` occurs wins (no match: `default`); past its
last turn, the last turn repeats. Usage is made up when the turn gives none, with
`prompt_tokens_details.cached_tokens` counting the system prompt and tools as cached
whenever that exact prefix was seen before, as a provider's prompt cache would.
Every request is kept in `requests` for tests to inspect.

Streaming: a request with `stream: true` is answered with Server-Sent Events of
`chat.completion.chunk` objects, as OpenAI streams them: the role first, the content
in pieces, each tool call as its id and name then its arguments in pieces, a last
chunk with the finish reason, a usage chunk (no choices) when
`stream_options.include_usage` is set, then `data: [DONE]`. A turn with a `gate`
sends each piece only once the gate lets it through: `POST /v1/_gates/NAME` with
`{"chunks": N}` releases N pieces, without a body every piece to come (tests hold a
stream half-way this way and look at what arrived).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}


_WORDS = re.compile(r"\s*\S+\s*|\s+")
_ARGUMENT_PIECE = 16  # characters of a tool call's arguments per chunk
_OPEN = 1 << 62  # a gate released without a count: every piece to come


class ScriptError(ValueError):
    """A script that cannot be served; the message says where."""


def load_script(text: str) -> dict[str, Any]:
    """Parse and check a script (JSON or YAML)."""
    try:
        script = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ScriptError(f"not JSON or YAML: {error}") from None
    if not isinstance(script, dict):
        raise ScriptError("a script is an object with 'conversations' (and 'default')")
    conversations = script.get("conversations", [])
    if not isinstance(conversations, list):
        raise ScriptError("'conversations' must be a list")
    for index, conversation in enumerate(conversations):
        turns = conversation.get("turns") if isinstance(conversation, dict) else None
        if not isinstance(turns, list) or not turns:
            raise ScriptError(f"conversations[{index}] needs a non-empty 'turns' list")
        for number, turn in enumerate(turns):
            _check_turn(turn, f"conversations[{index}].turns[{number}]")
    if "default" in script:
        _check_turn(script["default"], "default")
    return script


def _check_turn(turn: Any, where: str) -> None:
    if not isinstance(turn, dict) or not (
        "content" in turn or "tool_calls" in turn or "chunks" in turn
    ):
        raise ScriptError(f"{where} needs 'content', 'chunks' or 'tool_calls'")
    for call in turn.get("tool_calls") or []:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ScriptError(f"{where}: each tool call needs a 'name'")
    chunks = turn.get("chunks")
    if chunks is not None and not (
        isinstance(chunks, list) and all(isinstance(c, str) for c in chunks)
    ):
        raise ScriptError(f"{where}: 'chunks' must be a list of strings")
    if "chunk_chars" in turn and not (
        isinstance(turn["chunk_chars"], int) and turn["chunk_chars"] > 0
    ):
        raise ScriptError(f"{where}: 'chunk_chars' must be a positive integer")


def demo_script() -> dict[str, Any]:
    """The script of the README's example."""
    text = resources.files(__package__).joinpath("demo_script.json").read_text("utf-8")
    return load_script(text)


@dataclass
class _Gate:
    """Pieces of streamed answers that may go out (`permits`), and a wake-up."""

    permits: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def through(self) -> None:
        while self.permits <= 0:
            self.changed.clear()
            await self.changed.wait()
        self.permits -= 1

    def release(self, chunks: int) -> None:
        self.permits = min(_OPEN, self.permits + chunks)
        self.changed.set()


@dataclass
class ScriptedLlm:
    """The endpoint: a Starlette app answering from `script`."""

    script: dict[str, Any]
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Pieces of streamed answers sent so far, per gate (what a held stream has shown).
    sent: dict[str, int] = field(default_factory=dict)
    _errors_served: dict[tuple[int, int], int] = field(default_factory=dict)
    _prefixes: set[str] = field(default_factory=set)
    _gates: dict[str, _Gate] = field(default_factory=dict)
    _ids: int = 0

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/_gates/{name}", self._release, methods=["POST", "GET"]),
            ]
        )

    def release(self, gate: str, chunks: int | None = None) -> None:
        """Let `chunks` more pieces of `gate`'s streams through (None: all to come)."""
        self._gate(gate).release(_OPEN if chunks is None else chunks)

    def _gate(self, name: str) -> _Gate:
        return self._gates.setdefault(name, _Gate())

    async def _release(self, request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "POST":
            body = await request.body()
            chunks = json.loads(body).get("chunks") if body.strip() else None
            self.release(name, None if chunks is None else int(chunks))
        return JSONResponse({"gate": name, "sent": self.sent.get(name, 0)})

    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": "scripted", "object": "model", "created": 0, "owned_by": "aob"}],
            }
        )

    async def _completions(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' must be a list")
        self.requests.append(body)
        index, turns = self._conversation(body["messages"])
        number = sum(1 for m in body["messages"] if m.get("role") == "assistant")
        turn = turns[min(number, len(turns) - 1)]
        errors = turn.get("errors") or []
        served = self._errors_served.get((index, number), 0)
        if served < len(errors):
            self._errors_served[(index, number)] = served + 1
            spec = errors[served]
            return _error(
                int(spec.get("status", 500)),
                spec.get("message", "scripted error"),
                retry_after_ms=spec.get("retry_after_ms", 10),
            )
        if turn.get("delay_ms"):
            await asyncio.sleep(turn["delay_ms"] / 1000)
        completion = self._completion(body, turn)
        if body.get("stream"):
            return StreamingResponse(
                self._streamed(completion, turn, _include_usage(body)),
                media_type="text/event-stream",
            )
        return JSONResponse(completion)

    async def _streamed(
        self, completion: dict[str, Any], turn: dict[str, Any], include_usage: bool
    ) -> AsyncIterator[bytes]:
        """`completion` as chat.completion.chunk events, piece by piece (see the module
        doc), each piece waiting for the turn's gate and delay."""
        gate = turn.get("gate")
        delay = float(turn.get("chunk_delay_ms") or 0) / 1000
        for chunk, is_piece in _chunks(completion, turn, include_usage):
            if is_piece:
                if delay:
                    await asyncio.sleep(delay)
                if gate is not None:
                    await self._gate(str(gate)).through()
                    self.sent[str(gate)] = self.sent.get(str(gate), 0) + 1
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    def _conversation(self, messages: list[Any]) -> tuple[int, list[dict[str, Any]]]:
        text = (
            "\n".join(
                str(m.get("content") or "")
                for m in messages
                if isinstance(m, dict) and m.get("role") in ("user", "tool")
            )
            + "\n"
            + "\n".join(  # the node context: the second system message on
                str(m.get("content") or "")
                for m in messages[1:]
                if isinstance(m, dict) and m.get("role") == "system"
            )
        )
        for index, conversation in enumerate(self.script.get("conversations", [])):
            if str(conversation.get("match", "")) in text:
                return index, conversation["turns"]
        return -1, [self.script.get("default", {"content": "I have no script for this."})]

    def _completion(self, body: dict[str, Any], turn: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        calls = [
            {
                "id": f"call_{self._ids}_{n}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": json.dumps(call.get("arguments", {})),
                },
            }
            for n, call in enumerate(turn.get("tool_calls") or [])
        ]
        content = "".join(turn["chunks"]) if "chunks" in turn else turn.get("content")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return {
            "id": f"chatcmpl-{self._ids}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}
            ],
            "usage": self._usage(body, turn, message),
        }

    def _usage(
        self, body: dict[str, Any], turn: dict[str, Any], message: dict[str, Any]
    ) -> dict[str, Any]:
        messages = body["messages"]
        prefix = json.dumps([messages[:1], body.get("tools")], sort_keys=True)
        digest = hashlib.sha256(prefix.encode()).hexdigest()
        cached = len(prefix) // 4 if digest in self._prefixes else 0
        self._prefixes.add(digest)
        given = turn.get("usage") or {}
        prompt = int(given.get("prompt_tokens", len(json.dumps(messages)) // 4 + len(prefix) // 4))
        completion = int(given.get("completion_tokens", len(json.dumps(message)) // 4 + 1))
        cached = int(given.get("cached_tokens", min(cached, prompt)))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _chunks(
    completion: dict[str, Any], turn: dict[str, Any], include_usage: bool
) -> Iterator[tuple[dict[str, Any], bool]]:
    """The chunks of a streamed `completion`, each with whether it is a piece (content
    or arguments: what gates and delays hold back)."""
    choice = completion["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": completion["id"],
            "object": "chat.completion.chunk",
            "created": completion["created"],
            "model": completion["model"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    yield chunk({"role": "assistant", "content": ""}), False
    for piece in _content_pieces(message.get("content"), turn):
        yield chunk({"content": piece}), True
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        start = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": function["name"], "arguments": ""},
        }
        yield chunk({"tool_calls": [start]}), False
        arguments = function["arguments"]
        for at in range(0, len(arguments), _ARGUMENT_PIECE):
            piece = arguments[at : at + _ARGUMENT_PIECE]
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}), True
    yield chunk({}, choice["finish_reason"]), False
    if include_usage:
        yield {**chunk({}), "choices": [], "usage": completion["usage"]}, False


def _content_pieces(content: str | None, turn: dict[str, Any]) -> list[str]:
    if not content:
        return []
    if turn.get("chunks") is not None:
        return list(turn["chunks"])
    size = turn.get("chunk_chars")
    if size:
        return [content[at : at + size] for at in range(0, len(content), size)]
    return _WORDS.findall(content)


def _error(status: int, message: str, *, retry_after_ms: int | None = None) -> Response:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    headers = {}
    if retry_after_ms is not None:  # what providers send with 429s (and some 5xx)
        headers["retry-after-ms"] = str(retry_after_ms)
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": kind}},
        status_code=status,
        headers=headers,
    )


@contextlib.asynccontextmanager
async def serving(llm: ScriptedLlm, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `llm` on this event loop; yields the base URL ("http://host:port/v1")."""
    config = uvicorn.Config(
        llm.app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                await task
                raise RuntimeError(f"the scripted LLM could not listen on {host}:{port}")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A scripted OpenAI-compatible endpoint.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8808)
    parser.add_argument("--script", type=Path, help="JSON or YAML script (default: the demo's)")
    args = parser.parse_args(argv)
    try:
        script = load_script(args.script.read_text("utf-8")) if args.script else demo_script()
    except (OSError, ScriptError) as error:
        print(f"demo_llm: {error}")
        return 2
    print(
        f"scripted LLM on http://{args.host}:{args.port}/v1  (set AOB_LLM_BASE_URL to that)",
        flush=True,
    )
    uvicorn.run(ScriptedLlm(script).app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
