"""Bounds on what a request may carry, checked before any handler runs.

- the body: at most `max_body_bytes`, counted as it arrives (a chunked body sends no
  Content-Length to check up front): 413;
- a JSON body: nesting depth, string length, object keys' length, items per array or
  object: 422 naming the JSON pointer of the first offending value;
- any body that parses as JSON, whatever its content type says (FastAPI parses a body
  without one, the rate limiter parses every submission): the same bounds;
- the URL: each path segment (identifiers: run, approval, workflow ids ...) at most
  `max_identifier` characters (400), the query string at most `max_query` (414).

Node and edge counts of definitions are the workflow validator's (422 invalid-workflow).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

# The largest integer the stores hold (SQLite INTEGER, Postgres BIGINT): every integer
# a request may carry (versions, offsets, event ids) is bounded by it, or the store
# fails with an overflow (a 500) instead of the caller getting a 4xx.
INT64_MAX: Final = 2**63 - 1
API_PREFIX: Final = "/api/"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Bounds:
    max_body_bytes: int = 2 * 1024 * 1024
    max_depth: int = 64
    max_string: int = 256 * 1024
    max_key: int = 256
    max_items: int = 100_000
    max_values: int = 200_000  # in all: bounds the walk (and the handler's work)
    max_identifier: int = 200
    max_query: int = 8192


class OutOfBounds(Exception):
    def __init__(self, status: int, slug: str, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.slug, self.title, self.detail, self.extra = (
            status,
            slug,
            title,
            detail,
            extra,
        )


def check_url(path: str, query: bytes, bounds: Bounds) -> None:
    if len(query) > bounds.max_query:
        raise OutOfBounds(
            414,
            "uri-too-long",
            "Query too long",
            f"the query string has {len(query)} bytes; the limit is {bounds.max_query}",
        )
    for segment in path.split("/"):
        if len(segment) > bounds.max_identifier:
            raise OutOfBounds(
                400,
                "identifier-too-long",
                "Identifier too long",
                f"a path segment has {len(segment)} characters; identifiers have at most "
                f"{bounds.max_identifier}",
            )


def check_json(document: Any, bounds: Bounds) -> None:
    """Raise OutOfBounds for the first value outside `bounds`: too deep, too long, too
    many items (in one container, or in all), a key too long, a float JSON cannot hold
    (NaN, infinities: Python's parser takes them) or a string that is not Unicode text
    (a lone UTF-16 surrogate, which JSON's escapes allow and no store can write).

    Iterative (a document may nest deeper than Python's recursion limit) and lean: a
    2 MB body of tiny nested lists is ~600,000 values, and this runs on the event loop;
    places are parent links, made into a JSON pointer only for the value refused."""
    found = _first_out_of_bounds(document, bounds)
    if found is not None:
        place, problem = found
        pointer = _pointer(place)
        raise OutOfBounds(
            422,
            "input-out-of-bounds",
            "Request out of bounds",
            f"the JSON body at {pointer} has {problem}",
            pointer=pointer,
        )


# Where a value is: None for the document itself, else (its container's place, its key
# or index).
_Place = tuple[Any, str | int] | None


def _first_out_of_bounds(document: Any, bounds: Bounds) -> tuple[_Place, str] | None:
    problem = _scalar_problem(document, bounds)
    if problem is not None:
        return None, problem
    if not isinstance(document, dict | list):
        return None
    stack: list[tuple[Any, int, _Place]] = [(document, 0, None)]
    values = 0
    while stack:
        container, depth, place = stack.pop()
        size = len(container)
        if size > bounds.max_items:
            return place, f"{size} items (limit {bounds.max_items})"
        values += size
        if values > bounds.max_values:
            return place, f"more than {bounds.max_values} values in all (the limit)"
        if size and depth >= bounds.max_depth:
            first = next(iter(container)) if isinstance(container, dict) else 0
            return (place, first), f"nested deeper than {bounds.max_depth} levels"
        if isinstance(container, dict):
            for key in container:
                if len(key) > bounds.max_key:
                    return place, f"a key of {len(key)} characters (limit {bounds.max_key})"
                if not key.isascii() and _lone_surrogate(key):
                    return place, "a key that is not Unicode text (a lone UTF-16 surrogate)"
            children: Any = container.items()
        else:
            children = enumerate(container)
        for key, item in children:
            if isinstance(item, dict | list):
                stack.append((item, depth + 1, (place, key)))
            else:
                problem = _scalar_problem(item, bounds)
                if problem is not None:
                    return (place, key), problem
    return None


def _scalar_problem(value: Any, bounds: Bounds) -> str | None:
    if isinstance(value, str):
        if len(value) > bounds.max_string:
            return f"a string of {len(value)} characters (limit {bounds.max_string})"
        if not value.isascii() and _lone_surrogate(value):
            return "a string that is not Unicode text (a lone UTF-16 surrogate)"
    elif isinstance(value, float) and not math.isfinite(value):
        return "a number JSON cannot hold (NaN, Infinity, or too large for a double)"
    return None


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _pointer(place: _Place) -> str:
    parts: list[str] = []
    while place is not None:
        place, key = place
        parts.append(str(key).replace("~", "~0").replace("/", "~1")[:64])
    return "/" + "/".join(reversed(parts)) if parts else "/"


def within_by_size(body: bytes, bounds: Bounds) -> bool:
    """Whether the JSON text `body` is within `bounds` by its size alone, so that its
    document need not be walked (most requests: a walk is a third of the checks' time).
    A decoded string, key or container is never longer than its text, and a value is
    nested in at most as many containers as the text has opening brackets. Text that
    may hold what no size shows (NaN, infinities, a three-digit exponent, a \\u escape
    that may be a lone surrogate) is walked."""
    return (
        len(body) <= min(bounds.max_string, bounds.max_key, bounds.max_items)
        and body.count(b"{") + body.count(b"[") <= bounds.max_depth
        and _UNSURE.search(body) is None
    )


_UNSURE: Final = re.compile(rb"NaN|Infinity|\\u|[0-9][eE][+-]?[0-9]{3}")


class BoundsMiddleware:
    """Refuses requests outside `bounds` with problem+json; hands others on with the
    body it read (`scope["state"]["json_body"]` holds a parsed JSON body)."""

    def __init__(self, app: ASGIApp, bounds: Bounds | None = None) -> None:
        self.app = app
        self.bounds = bounds or Bounds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            check_url(scope.get("path", ""), scope.get("query_string", b""), self.bounds)
            if scope["type"] == "http" and scope.get("method") in ("POST", "PUT", "PATCH"):
                receive = await self._checked_body(scope, receive)
        except OutOfBounds as out:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": out.title})
                return
            await _refuse(send, scope.get("path", ""), out)
            return
        await self.app(scope, receive, send)

    async def _checked_body(self, scope: Scope, receive: Receive) -> Receive:
        limit = self.bounds.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                raise _too_large(limit)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        # Only the API's routes take bodies: one sent to /health, the console or the docs
        # (open to anyone) is answered by its route without being parsed.
        if body and scope.get("path", "").startswith(API_PREFIX):
            try:
                document = json.loads(body)
            except RecursionError:
                raise OutOfBounds(
                    422,
                    "input-out-of-bounds",
                    "Request out of bounds",
                    f"the JSON body nests deeper than {self.bounds.max_depth} levels",
                ) from None
            except ValueError:
                document = None  # not JSON: the handler's validation says so
            else:
                if not within_by_size(body, self.bounds):
                    check_json(document, self.bounds)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _too_large(limit: int) -> OutOfBounds:
    return OutOfBounds(
        413,
        "payload-too-large",
        "Request body too large",
        f"the request body exceeds {limit} bytes",
    )


async def _refuse(send: Send, path: str, out: OutOfBounds) -> None:
    body = json.dumps(
        {
            "type": f"https://aob.dev/problems/{out.slug}",
            "title": out.title,
            "status": out.status,
            "detail": out.detail,
            "instance": path,
            **out.extra,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": out.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
