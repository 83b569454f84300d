"""The API over HTTP, on the standard library's http.client.

Not httpx: importing it costs more than starting Python itself, and every `aob`
command pays for its imports. Requests send the bearer token and actor header;
problem+json errors become one-line `CliError`s.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aob
from aob.cli.config import Connection, server_problem
from aob.cli.errors import EXIT_API, EXIT_UNREACHABLE, EXIT_USAGE, CliError, error_json
from aob.cli.render import summary

Query = Mapping[str, str | int | float | list[str] | None]

# Statuses that mean the input was wrong (a workflow that does not validate, a bad
# parameter): the documented exit code of invalid input, not of a refusal.
INVALID_INPUT_STATUSES = frozenset({400, 422})
# What a proxy answers when the server behind it is down or slow.
GATEWAY_STATUSES = frozenset({502, 503, 504})


class ApiError(CliError):
    """The server answered with an error status."""

    def __init__(self, message: str, status: int, problem: Mapping[str, Any]) -> None:
        code = EXIT_USAGE if status in INVALID_INPUT_STATUSES else EXIT_API
        super().__init__(message, code)
        self.status = status
        self.problem = problem

    def as_json(self) -> dict[str, Any]:
        """The server's problem as it sent it (RFC 9457), with our exit code."""
        problem = {k: v for k, v in self.problem.items() if k not in {"type", "title", "detail"}}
        problem["status"] = self.status
        return error_json(
            str(self.problem.get("type") or "about:blank"),
            str(self.problem.get("title") or f"HTTP {self.status}"),
            str(self.problem.get("detail") or self),
            self.code,
            **problem,
        )

    @property
    def is_missing_route(self) -> bool:
        """A 404 for the path itself (an older server), not for the thing it names."""
        return self.status in (404, 405) and self.problem.get("detail") in {
            "Not Found",
            "Method Not Allowed",
        }


class Unreachable(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_UNREACHABLE)


class NotAobServer(CliError):
    """Something answers at the address, but not as aob does."""

    def __init__(self, base: str, status: int, content_type: str) -> None:
        super().__init__(
            f"{base} is not an aob server (HTTP {status}, {content_type}); check --server "
            "or AOB_SERVER",
            EXIT_UNREACHABLE,
            error_type="not-aob-server",
        )


def segment(value: str) -> str:
    """`value` as one path segment."""
    return quote(value, safe="")


class SseEvent:
    __slots__ = ("data", "event", "id")

    def __init__(self, event: str, data: str, event_id: str | None) -> None:
        self.event = event
        self.data = data
        self.id = event_id


class Api:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        problem = server_problem(connection.server)
        if problem:
            raise CliError(problem, EXIT_USAGE)
        parts = urlsplit(connection.server)
        assert parts.hostname is not None  # server_problem saw to it
        self.base = connection.server
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None
        # (status, content type) of the last answer: what to name if it was not aob's.
        self.last_answer: tuple[int, str] | None = None

    # --- JSON requests ------------------------------------------------------------------

    def get(self, path: str, query: Query | None = None) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body if body is not None else {})

    def request(
        self, method: str, path: str, *, body: Any = None, query: Query | None = None
    ) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        headers = self._headers({"Accept": "application/json"})
        if payload is not None:
            headers["Content-Type"] = "application/json"
        target = self._target(path, query)
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, target, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as error:
                # A kept-alive connection the server has closed meanwhile: retry once.
                self.close()
                if attempt == 2:
                    raise self._unreachable(error) from None
            except (OSError, http.client.HTTPException) as error:
                self.close()
                raise self._unreachable(error) from None
        return self._decode(response, data)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- Server-Sent Events -----------------------------------------------------------

    def stream(
        self, path: str, query: Query, last_event_id: int | None, read_timeout: float
    ) -> Iterator[SseEvent]:
        """Open an SSE stream and yield its events until the server closes it.

        Connection failures raise `Unreachable`; a refused request raises `ApiError`.
        A connection lost mid-stream raises `Unreachable` too (the caller reconnects).
        """
        headers = self._headers({"Accept": "text/event-stream", "Cache-Control": "no-store"})
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        conn = self._new_connection(read_timeout)
        try:
            try:
                conn.request("GET", self._target(path, query), headers=headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as error:
                raise self._unreachable(error, read_timeout) from None
            if response.status >= 400:
                self._decode(response, response.read())
            # What to name if the events turn out not to be aob's (main() checks).
            self.last_answer = (response.status, _content_type(response))
            if _content_type(response) != "text/event-stream":
                raise NotAobServer(self.base, response.status, _content_type(response))
            try:
                yield from parse_sse(response)
            except (OSError, http.client.HTTPException) as error:
                raise self._unreachable(error, read_timeout) from None
        finally:
            conn.close()

    # --- plumbing ---------------------------------------------------------------------

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        headers = {"User-Agent": f"aob-cli/{aob.__version__}", **extra}
        if self.connection.token:
            headers["Authorization"] = f"Bearer {self.connection.token}"
        if self.connection.actor:
            headers["X-Aob-Actor"] = self.connection.actor
        return headers

    def _target(self, path: str, query: Query | None) -> str:
        target = self._prefix + path
        if query:
            pairs = [(k, v) for k, v in query.items() if v is not None]
            if pairs:
                target += "?" + urlencode(pairs, doseq=True)
        return target

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = self._new_connection(self.connection.timeout)
        return self._conn

    def _new_connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _unreachable(self, error: BaseException, timeout: float | None = None) -> Unreachable:
        """`timeout`: the wait that ran out, if not --timeout (a stream's own)."""
        if isinstance(error, socket.timeout | TimeoutError):
            waited = self.connection.timeout if timeout is None else timeout
            reason = f"no answer within {waited:g} s"
        elif isinstance(error, ConnectionRefusedError):
            reason = "connection refused (is `aob server dev` running?)"
        else:
            reason = str(error) or type(error).__name__
        return Unreachable(f"cannot reach the aob server at {self.base}: {reason}")

    def _decode(self, response: http.client.HTTPResponse, data: bytes) -> Any:
        content_type = _content_type(response)
        self.last_answer = (response.status, content_type)
        is_json = content_type == "application/json" or content_type.endswith("+json")
        try:
            body = json.loads(data) if data and is_json else None
        except ValueError:
            body = None
        if response.status >= 400:
            if isinstance(body, dict):
                raise ApiError(problem_text(response.status, body), response.status, body)
            if response.status in GATEWAY_STATUSES:  # a proxy whose aob is not there
                said = summary(data.decode("utf-8", "replace"), 120)
                raise Unreachable(
                    f"{self.base} answered HTTP {response.status} {response.reason} "
                    f"({content_type}{': ' + said if said else ''})"
                )
            # aob answers every error, even of a path it does not have, with a problem
            raise NotAobServer(self.base, response.status, content_type)
        if data and body is None:
            raise NotAobServer(self.base, response.status, content_type)
        return body

    def is_aob(self) -> bool:
        """Whether an aob server answers at the address (its OpenAPI document says so)."""
        answer = self.last_answer
        try:
            spec = self.get("/openapi.json")
        except CliError:
            return False
        finally:
            self.last_answer = answer
        info = spec.get("info") if isinstance(spec, dict) else None
        return isinstance(info, dict) and info.get("title") == "aob"

    def not_aob(self) -> NotAobServer:
        status, content_type = self.last_answer or (0, "no answer")
        return NotAobServer(self.base, status, content_type)


def _content_type(response: http.client.HTTPResponse) -> str:
    value = response.getheader("Content-Type") or ""
    return value.split(";", 1)[0].strip().lower() or "no content type"


def problem_text(status: int, problem: Mapping[str, Any]) -> str:
    """One line (plus one per field error) from an RFC 9457 problem."""
    detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
    errors = problem.get("errors") or []
    lines = [str(detail)]
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict):
            lines.append(f"  {error.get('path') or '/'}: {error.get('message')}")
    return "\n".join(lines)


def parse_sse(response: http.client.HTTPResponse) -> Iterator[SseEvent]:
    """Events of a text/event-stream, per the WHATWG parsing rules we need."""
    event, event_id = "message", None
    data: list[str] = []
    while True:
        raw = response.readline()
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data), event_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
