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
    default: {content: "I have no script for this."}

The first conversation whose `match` occurs wins (no match: `default`); past its
last turn, the last turn repeats. Usage is made up when the turn gives none, with
`prompt_tokens_details.cached_tokens` counting the system prompt and tools as cached
whenever that exact prefix was seen before, as a provider's prompt cache would.
Every request is kept in `requests` for tests to inspect.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}


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
    if not isinstance(turn, dict) or not ("content" in turn or "tool_calls" in turn):
        raise ScriptError(f"{where} needs 'content' or 'tool_calls'")
    for call in turn.get("tool_calls") or []:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ScriptError(f"{where}: each tool call needs a 'name'")


def demo_script() -> dict[str, Any]:
    """The script of the README's example."""
    text = resources.files(__package__).joinpath("demo_script.json").read_text("utf-8")
    return load_script(text)


@dataclass
class ScriptedLlm:
    """The endpoint: a Starlette app answering from `script`."""

    script: dict[str, Any]
    requests: list[dict[str, Any]] = field(default_factory=list)
    _errors_served: dict[tuple[int, int], int] = field(default_factory=dict)
    _prefixes: set[str] = field(default_factory=set)
    _ids: int = 0

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self._completions, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
        ])

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": "scripted", "object": "model", "created": 0, "owned_by": "aob"}]})

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
            return _error(int(spec.get("status", 500)), spec.get("message", "scripted error"),
                          retry_after_ms=spec.get("retry_after_ms", 10))
        if turn.get("delay_ms"):
            await asyncio.sleep(turn["delay_ms"] / 1000)
        return JSONResponse(self._completion(body, turn))

    def _conversation(self, messages: list[Any]) -> tuple[int, list[dict[str, Any]]]:
        text = "\n".join(
            str(m.get("content") or "") for m in messages
            if isinstance(m, dict) and m.get("role") in ("user", "tool")
        ) + "\n" + "\n".join(  # the node context: the second system message on
            str(m.get("content") or "") for m in messages[1:]
            if isinstance(m, dict) and m.get("role") == "system"
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
                "function": {"name": call["name"],
                             "arguments": json.dumps(call.get("arguments", {}))},
            }
            for n, call in enumerate(turn.get("tool_calls") or [])
        ]
        message: dict[str, Any] = {"role": "assistant", "content": turn.get("content")}
        if calls:
            message["tool_calls"] = calls
        return {
            "id": f"chatcmpl-{self._ids}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": self._usage(body, turn, message),
        }

    def _usage(self, body: dict[str, Any], turn: dict[str, Any],
               message: dict[str, Any]) -> dict[str, Any]:
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


def _error(status: int, message: str, *, retry_after_ms: int | None = None) -> Response:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    headers = {}
    if retry_after_ms is not None:  # what providers send with 429s (and some 5xx)
        headers["retry-after-ms"] = str(retry_after_ms)
    return JSONResponse({"error": {"message": message, "type": kind, "code": kind}},
                        status_code=status, headers=headers)


@contextlib.asynccontextmanager
async def serving(llm: ScriptedLlm, host: str = "127.0.0.1",
                  port: int = 0) -> AsyncIterator[str]:
    """Serve `llm` on this event loop; yields the base URL ("http://host:port/v1")."""
    config = uvicorn.Config(llm.app, host=host, port=port, log_level="warning",
                            lifespan="off", access_log=False)
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
    print(f"scripted LLM on http://{args.host}:{args.port}/v1  "
          f"(set AOB_LLM_BASE_URL to that)", flush=True)
    uvicorn.run(ScriptedLlm(script).app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
