"""A loopback HTTP listener that records every request it receives (method, path,
headers, body), served by uvicorn on a thread of its own.

`/v1/...` is an OpenAI-compatible scripted LLM (`aob.workers.agent.demo_llm`): tests add
conversations, matched by a marker in the prompt. Every other path answers what
`respond` says for it (status, body, delay), 200 `{"ok": true}` by default. Whatever
reaches it, `requests` holds: the attacks check no secret went out, and that schema
resolution never reached the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.types import Message, Receive, Scope, Send

from aob.workers.agent.demo_llm import ScriptedLlm, load_script


@dataclass
class Captured:
    method: str
    path: str  # with the query string
    headers: list[tuple[str, str]]
    body: bytes

    def text(self, *, without_header: str | None = None) -> str:
        """Everything the request carried, as text, maybe leaving one header out."""
        headers = [f"{k}: {v}" for k, v in self.headers if k.lower() != without_header]
        return "\n".join([f"{self.method} {self.path}", *headers, self.body.decode("latin-1")])


@dataclass
class Answer:
    status: int = 200
    body: bytes = b'{"ok": true}'
    content_type: str = "application/json"
    delay_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class CaptureServer:
    llm: ScriptedLlm = field(default_factory=lambda: ScriptedLlm({"conversations": []}))
    requests: list[Captured] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)
    url: str = ""

    @property
    def llm_url(self) -> str:
        return f"{self.url}/v1"

    def converse(self, match: str, *turns: dict[str, Any]) -> None:
        """Agent prompts containing `match` get these turns (see demo_llm's format)."""
        conversations = [
            *self.llm.script.get("conversations", []),
            {"match": match, "turns": list(turns)},
        ]
        self.llm.script = load_script_dict(
            {"conversations": conversations, "default": {"content": "no script"}}
        )

    def respond(self, path: str, answer: Answer) -> None:
        self.answers[path] = answer

    def seen(self, path_prefix: str = "") -> list[Captured]:
        return [r for r in list(self.requests) if r.path.startswith(path_prefix)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"] + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        received = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        self.requests.append(Captured(scope["method"], path, received, body))
        if scope["path"].startswith("/v1/"):
            await self.llm.app(scope, _replay(body), send)
            return
        answer = self.answers.get(scope["path"], Answer())
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        headers = [(b"content-type", answer.content_type.encode())]
        headers += [(k.encode(), v.encode()) for k, v in answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    @classmethod
    @contextlib.contextmanager
    def serving(cls) -> Iterator[CaptureServer]:
        capture = cls()
        config = uvicorn.Config(
            capture, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="capture-server", daemon=True)
        thread.start()
        for _ in range(1000):
            if server.started:
                break
            thread.join(0.01)  # until uvicorn says it listens
        assert server.started, "the capture server did not start"
        capture.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        try:
            yield capture
        finally:
            server.should_exit = True
            thread.join(10)


def load_script_dict(script: dict[str, Any]) -> dict[str, Any]:
    return load_script(json.dumps(script))


def _replay(body: bytes) -> Receive:
    """A receive channel that gives `body` again (the recorder read it first)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect until the response is sent
        return {"type": "http.disconnect"}

    return receive
