"""The API side of rate limiting: run submissions are admitted before any handler
runs, so a refused one records nothing.

Covers `POST /api/v1/runs` (the workflow is inline, or resolved from the read models
by tag / id) and `POST /api/v1/runs/{id}/replay` (the replayed run's definition). A
refusal is 429 problem+json with `Retry-After` (seconds). Requests this middleware
cannot classify (bad JSON, unknown workflow) pass through unlimited: the handler
refuses them without recording anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from aob.platform.ratelimit.limiter import RateLimited, RateLimiter

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
DefinitionLookup = Callable[[dict[str, Any], str | None, str], Awaitable[Any]]

_REPLAY: Final = re.compile(r"^/api/v1/runs/([^/]+)/replay$")
MAX_BODY: Final = 16 * 1024 * 1024  # beyond the API's own limit: it refuses first


class RateLimitMiddleware:
    """Admits run submissions through `limiter()` (None: no limiting), for the tenant
    of the request's principal; `lookup(body, replayed_run_id, tenant)` finds the
    definition (the tenant's own workflows only)."""

    def __init__(
        self,
        app: ASGIApp,
        limiter: Callable[[], RateLimiter | None],
        lookup: DefinitionLookup,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.lookup = lookup
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter = self.limiter()
        path = scope.get("path", "")
        replay = _REPLAY.match(path)
        submits = scope["type"] == "http" and scope.get("method") == "POST"
        if limiter is None or not submits or (path != "/api/v1/runs" and replay is None):
            await self.app(scope, receive, send)
            return
        body, receive = await _buffered(receive)
        try:
            document = json.loads(body) if body else {}
        except (ValueError, RecursionError):  # the handler (or the bounds) refuse it
            document = None
        principal = scope.get("state", {}).get("principal")
        tenant = str(getattr(principal, "tenant", "default"))
        definition: Any = None
        if isinstance(document, dict) and _classifiable(document):
            definition = await self.lookup(document, replay[1] if replay else None, tenant)
        if definition is not None:
            try:
                await limiter.admit(tenant, definition)
            except RateLimited as refused:
                if self.on_refusal is not None:
                    self.on_refusal(refused.tier)
                await _too_many(send, path, refused)
                return
        await self.app(scope, receive, send)


def _classifiable(document: dict[str, Any]) -> bool:
    """Whether the lookup can use the body: its `version`, if any, is an integer the
    stores hold (a larger one overflows there; the handler refuses it)."""
    version = document.get("version")
    return not isinstance(version, int) or isinstance(version, bool) or 0 < version < 2**63


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a `receive` that hands it on again."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if not message.get("more_body", False) or size > MAX_BODY:
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def _too_many(send: Send, path: str, refused: RateLimited) -> None:
    body = json.dumps(
        {
            "type": "https://aob.dev/problems/rate-limited",
            "title": "Too many runs submitted",
            "status": 429,
            "detail": str(refused),
            "instance": path,
            "tier": refused.tier,
            "limit_per_minute": refused.per_minute,
            "retry_after": refused.retry_after_s,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(refused.retry_after_s).encode()),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
