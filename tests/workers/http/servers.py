"""Real loopback servers for the HTTP worker's tests.

`Recorder` accepts TCP connections and records every one (then hangs up): a blocked
request must leave it untouched. `Server` is a small HTTP/1.1 server (keep-alive,
optional TLS) whose routes the tests script, and which records every request with the
local address it arrived on, its Host header and, for TLS, the SNI the client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


class Recorder:
    def __init__(self) -> None:
        self.accepts: list[tuple[str, int]] = []
        self._server: asyncio.Server | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Recorder:
        self._server = await asyncio.start_server(self._accept, host, port)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts.append(writer.get_extra_info("peername")[:2])
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    local: str  # the address the connection arrived on
    sni: str | None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


@dataclass
class Response:
    status: int = 200
    body: bytes | str | Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    until_close: bool = False  # no Content-Length: the body ends when the connection does

    def encode(self) -> tuple[dict[str, str], bytes]:
        headers = dict(self.headers)
        body = self.body
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        return headers, body


Route = Callable[[Request], Response | Awaitable[Response]]
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Server:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.connections = 0
        self.routes: dict[str, Route] = {}
        self._server: asyncio.Server | None = None
        self._sni: dict[int, str | None] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self.host = ""
        self.port = 0

    def route(self, path: str, handler: Route | Response) -> None:
        self.routes[path] = handler if callable(handler) else (lambda _request: handler)

    def script(self, path: str, *responses: Response) -> None:
        """Answer `path` with `responses` in turn, repeating the last one."""
        queue = list(responses)

        def next_response(_request: Request) -> Response:
            return queue.pop(0) if len(queue) > 1 else queue[0]

        self.routes[path] = next_response

    async def start(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Server:
        if tls is not None:
            tls.sni_callback = self._record_sni
        self._server = await asyncio.start_server(self._serve, host, 0, ssl=tls)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        return self

    def _record_sni(self, sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self._sni[id(sock)] = name

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            for _ in range(3):  # let connections accepted just now start their handlers
                await asyncio.sleep(0)
            for handler in self._handlers:
                handler.cancel()
            await asyncio.gather(*self._handlers)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self.connections += 1
        ssl_object = writer.get_extra_info("ssl_object")
        sni = self._sni.get(id(ssl_object)) if ssl_object is not None else None
        local = writer.get_extra_info("sockname")[0]
        try:
            while await self._one(reader, writer, local, sni):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:  # stopping: end quietly (asyncio logs a cancelled handler)
            writer.transport.abort()  # and skip the TLS shutdown handshake with an idle client
        finally:
            self._handlers.discard(handler)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await writer.wait_closed()

    async def _one(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        local: str,
        sni: str | None,
    ) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *fields = head.decode("latin-1").split("\r\n")[:-2]
        method, target, _version = line.split(" ", 2)
        headers = {}
        for item in fields:
            name, _, value = item.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        request = Request(method, target, headers, body, local, sni)
        self.requests.append(request)
        handler = self.routes.get(request.path)
        response = Response(404, "no route") if handler is None else handler(request)
        if inspect.isawaitable(response):
            response = await response
        extra, payload = response.encode()
        lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}"]
        if not response.until_close:
            extra.setdefault("Content-Length", str(len(payload)))
        lines += [f"{k}: {v}" for k, v in extra.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if method != "HEAD":
            writer.write(payload)
        await writer.drain()
        return not response.until_close and headers.get("connection", "").lower() != "close"
