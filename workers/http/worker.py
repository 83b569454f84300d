"""The HTTP worker: executes `http` nodes (topic `aob.tasks.http`) through the SSRF guard.

One node execution:

1. The config is rendered (templates over the run context) and validated (`config`);
   the secrets it names are looked up among the operator's bindings (`secrets`).
2. The guard judges the URL; a host name is resolved once through the resolver port,
   every address is judged, and the connection goes to a checked address (`transport`).
3. Redirects are followed by hand, each hop judged again from scratch (scheme included);
   secret headers are dropped when the origin changes; 303, and 301/302 after a POST,
   continue as GET. Bound secrets are added to each hop just before it is sent, only
   toward their bound hosts (see `secrets`).
4. The body is read up to `max_response_bytes`; a JSON body is parsed.

Retries within one node attempt, bounded by `retries` and by the task's timeout: when
the request never left (DNS failure, connection refused) for any method; on 429, 5xx or
an error after sending only for idempotent methods, unless the node sets
`retries.non_idempotent`. Delays grow exponentially with full jitter and are at least
the server's `Retry-After` (one longer than `max_retry_delay_ms` is not waited for).

A failure becomes NodeError, retryable when a later attempt may succeed (transport
errors, 429, 5xx), final for blocked requests, bad config, oversized bodies and other
unexpected statuses; the coordinator's node retry policy decides what happens next.

Every request carries an `Idempotency-Key` header, the same on each execution of one
node attempt and new for each attempt and iteration (see `idempotency`).

Output: {"status", "headers", "body", "elapsed_ms", "attempts"}, secrets redacted.
"""

from __future__ import annotations

import asyncio
import codecs
import email.utils
import json
import logging
import random
import ssl
import time
import traceback
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

import httpx
from prometheus_client import CollectorRegistry

from aob.events.tracing import instrument
from aob.events.types import Json, NodeScheduled
from aob.workers.host import NodeError, NodeType
from aob.workers.http.config import (
    BudgetError,
    ConfigError,
    RequestSpec,
    SandboxBusy,
    build_request,
)
from aob.workers.http.guard import (
    Blocked,
    GuardPolicy,
    IPAddress,
    Target,
    check_address,
    check_url,
)
from aob.workers.http.idempotency import idempotency_header
from aob.workers.http.metrics import metrics_for
from aob.workers.http.redact import Redactor
from aob.workers.http.resolver import ResolveError, Resolver, SystemResolver
from aob.workers.http.secrets import (
    DEFAULT_TENANT,
    Bound,
    SecretBindings,
    SecretRefused,
    check_headers,
    injected,
    refuse_unbound,
)
from aob.workers.http.settings import HttpWorkerSettings
from aob.workers.http.transport import pinned, pinned_client

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_EXCERPT = 200
Headers = tuple[tuple[str, str], ...]
# When a failed request may be sent again: "unsent" never reached the server (any
# method), "sent" may have (idempotent methods only), "never" cannot succeed next time.
RetryKind = Literal["unsent", "sent", "never"]


class _Failure(Exception):
    def __init__(
        self,
        message: str,
        *,
        retry: RetryKind,
        retry_after: float | None = None,
        why: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.retry_after = retry_after
        self.why = why  # why a "never" failure is final

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    reason: str
    headers: httpx.Headers
    content: bytes
    charset: str | None


class HttpWorker:
    """Executes http nodes; one shared connection pool. Close with `aclose`."""

    def __init__(
        self,
        settings: HttpWorkerSettings,
        *,
        resolver: Resolver | None = None,
        registry: CollectorRegistry | None = None,
        ssl_context: ssl.SSLContext | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.policy = settings.guard_policy()
        self.resolver = resolver or SystemResolver()
        self.metrics = metrics_for(registry) if registry is not None else metrics_for()
        self.client = pinned_client(
            ssl_context or _ssl_context(settings),
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_keepalive_connections,
        )
        instrument(self.client)  # its requests traced (and traceparent sent), tracing on
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._bindings = SecretBindings(settings.secrets)
        self._redactor = Redactor(settings.secret_headers, self._bindings.values())

    def node_type(self) -> NodeType:
        return NodeType(
            "http", self.handle, announce_start=True, concurrency=self.settings.concurrency
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def handle(self, task: NodeScheduled) -> Json:
        """Run one http node; its output, or NodeError."""
        redactor = self._redactor
        started = time.monotonic()
        try:
            spec = await build_request(task.config, _context(task), self.settings)
            bindings = self._bindings.for_node(spec.secrets, task.tenant or DEFAULT_TENANT)
            check_headers(bindings, spec.headers)
            redactor = redactor.with_headers(spec.headers)
            spec = replace(spec, headers=(*spec.headers, idempotency_header(task)))
            reply, attempts = await self._run(spec, bindings, task.timeout_ms)
        except SandboxBusy as error:
            raise self._failed("busy", f"http node: {error}", redactor, retryable=True) from None
        except BudgetError as error:
            raise self._failed(
                "budget",
                f"http node: {error}",
                redactor,
                retryable=False,
                not_retried="a template over its jq budget is over it again",
            ) from None
        except ConfigError as error:
            raise self._failed(
                "invalid_config",
                f"http node config: {error}",
                redactor,
                retryable=False,
                not_retried="the node's config is invalid",
            ) from None
        except Blocked as error:
            self.metrics.blocked.labels(error.layer.value, error.rule).inc()
            raise self._failed(
                "blocked",
                str(error),
                redactor,
                retryable=False,
                not_retried="the SSRF guard refuses this address every time",
            ) from None
        except SecretRefused as error:
            raise self._failed(
                "secret_refused",
                str(error),
                redactor,
                retryable=False,
                not_retried="the secret's binding does not allow this use",
            ) from None
        except _Failure as error:
            raise self._failed(
                "failed",
                str(error),
                redactor,
                retryable=error.retry != "never",
                not_retried=error.why,
            ) from None
        except Exception as error:  # a bug: still no secret in the message or the log
            message = redactor.text(f"{type(error).__name__}: {error}")
            frames = "".join(traceback.format_tb(error.__traceback__))
            log.error("http node crashed: %s\n%s", message, frames)
            self.metrics.nodes.labels("crashed").inc()
            raise NodeError(message) from None
        self.metrics.nodes.labels("completed").inc()
        return {
            "status": reply.status,
            "headers": redactor.headers(reply.headers),
            "body": redactor.json(_parse_body(reply)),
            "elapsed_ms": round((time.monotonic() - started) * 1000, 3),
            "attempts": attempts,
        }

    def _failed(
        self,
        outcome: str,
        message: str,
        redactor: Redactor,
        *,
        retryable: bool,
        not_retried: str | None = None,
    ) -> NodeError:
        self.metrics.nodes.labels(outcome).inc()
        message = redactor.text(message)
        log.info("http node %s: %s", outcome, message)
        return NodeError(message, retryable=retryable, not_retried=not_retried)

    # --- attempts and retries ----------------------------------------------------------

    async def _run(
        self, spec: RequestSpec, bindings: tuple[Bound, ...], task_timeout_ms: int | None
    ) -> tuple[_Reply, int]:
        deadline = time.monotonic() + task_timeout_ms / 1000 if task_timeout_ms else None
        attempt = 0
        while True:
            attempt += 1
            try:
                timeout = _remaining(spec.timeout_s, deadline)
                reply = await self._attempt(spec, bindings, timeout)
                if reply.status in spec.expect:
                    return reply, attempt
                raise _unexpected_status(spec, reply)
            except _Failure as failure:
                delay = self._retry_delay(spec, attempt, failure, deadline)
                if delay is None:
                    raise
            await self._sleep(delay)

    def _retry_delay(
        self, spec: RequestSpec, attempt: int, failure: _Failure, deadline: float | None
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when `failure` is final."""
        if failure.retry == "never" or attempt > spec.retry.max_retries:
            return None
        if failure.retry == "sent" and not spec.retry_after_sending:
            return None
        ceiling = min(spec.retry.max_backoff_s, spec.retry.backoff_s * 2 ** (attempt - 1))
        delay = self._rng.uniform(0, ceiling)
        if failure.retry_after is not None:
            limit = self.settings.max_retry_delay_ms / 1000
            if failure.retry_after > limit:
                failure.message += (
                    f" (Retry-After {failure.retry_after:g} s is longer than"
                    f" the {limit:g} s the worker waits)"
                )
                return None
            delay = max(delay, failure.retry_after)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay

    async def _attempt(
        self, spec: RequestSpec, bindings: tuple[Bound, ...], timeout: float
    ) -> _Reply:
        try:
            async with asyncio.timeout(timeout):
                return await self._follow(spec, bindings, timeout)
        except TimeoutError:
            raise _Failure(
                f"{spec.method} {_shown(spec.url)}: no complete response within {timeout:g} s",
                retry="sent",
            ) from None

    async def _follow(
        self, spec: RequestSpec, bindings: tuple[Bound, ...], timeout: float
    ) -> _Reply:
        target = first = check_url(spec.url, self.policy)
        refuse_unbound(bindings, first)
        method, headers, body = spec.method, spec.headers, spec.body
        for _ in range(self.settings.max_redirects + 1):
            secret = injected(bindings, target, first)
            reply = await self._exchange(method, target, headers, secret, body, spec, timeout)
            location = reply.headers.get("location")
            if not (spec.follow_redirects and reply.status in REDIRECT_STATUSES and location):
                return reply
            next_target = _redirect_target(target, location, self.policy)
            method, headers, body = self._redirected(
                reply.status, method, headers, body, next_target.origin == target.origin
            )
            target = next_target
        raise _Failure(
            f"{spec.method} {_shown(spec.url)}: more than {self.settings.max_redirects} redirects",
            retry="never",
            why="the redirects would go round again",
        )

    def _redirected(
        self, status: int, method: str, headers: Headers, body: bytes | None, same_origin: bool
    ) -> tuple[str, Headers, bytes | None]:
        if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
            method, body = "GET", None
            headers = tuple((n, v) for n, v in headers if n.lower() != "content-type")
        if not same_origin:
            headers = tuple((n, v) for n, v in headers if not self._redactor.is_secret_header(n))
        return method, headers, body

    # --- one exchange --------------------------------------------------------------------

    async def _exchange(
        self,
        method: str,
        target: Target,
        headers: Headers,
        secret: Headers,
        body: bytes | None,
        spec: RequestSpec,
        timeout: float,
    ) -> _Reply:
        addresses = await self._addresses(target)
        request = self.client.build_request(
            method, target.url, headers=headers, content=body, timeout=timeout
        )
        for name, value in secret:  # the last moment: to the checked, bound host only
            request.headers[name] = value
        shown = f"{method} {_shown(target.url)}"
        outcome = "cancelled"
        started = time.perf_counter()
        try:
            with pinned(target.host, target.port, addresses):
                response = await self.client.send(request, stream=True)
                try:
                    content = await _read_limited(response, spec.max_response_bytes, shown)
                finally:
                    await response.aclose()
            outcome = f"{response.status_code // 100}xx"
        except _Failure:
            outcome = "too_large"
            raise
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            outcome = "connect_error"
            raise _Failure(f"{shown}: cannot connect: {error}", retry="unsent") from None
        except httpx.TimeoutException as error:
            outcome = "timeout"
            raise _Failure(f"{shown}: timed out: {type(error).__name__}", retry="sent") from None
        except httpx.HTTPError as error:
            outcome = "transport_error"
            raise _Failure(f"{shown}: {type(error).__name__}: {error}", retry="sent") from None
        finally:
            self.metrics.request_seconds.labels(method, outcome).observe(
                time.perf_counter() - started
            )
        return _Reply(
            response.status_code,
            response.reason_phrase,
            response.headers,
            content,
            response.charset_encoding,
        )

    async def _addresses(self, target: Target) -> list[IPAddress]:
        """The addresses to connect to, every one judged (literal hosts were judged
        by check_url; names allowed by the operator are trusted)."""
        if target.address is not None:
            return [target.address]
        try:
            addresses = await self.resolver.resolve(target.host, target.port)
        except ResolveError as error:
            raise _Failure(str(error), retry="unsent") from None
        if not addresses:
            raise _Failure(f"{target.host!r} resolves to no address", retry="unsent")
        if not target.trusted:
            for address in addresses:
                check_address(address, self.policy, host=target.host)
        return addresses


def _context(task: NodeScheduled) -> Json:
    """What templates see: the node's inputs, never a secret."""
    return task.input if isinstance(task.input, dict) else {"input": task.input}


def http_node_type(
    settings: HttpWorkerSettings,
    *,
    resolver: Resolver | None = None,
    registry: CollectorRegistry | None = None,
) -> NodeType:
    """The `http` node type, for a WorkerHost. Its connection pool lives as long as the
    process; use `HttpWorker` directly to close it (`aclose`) on shutdown."""
    return HttpWorker(settings, resolver=resolver, registry=registry).node_type()


def _ssl_context(settings: HttpWorkerSettings) -> ssl.SSLContext:
    if settings.ca_bundle is not None:
        return ssl.create_default_context(cafile=str(settings.ca_bundle))
    return httpx.create_ssl_context(trust_env=False)


def _remaining(timeout: float, deadline: float | None) -> float:
    if deadline is None:
        return timeout
    return max(0.001, min(timeout, deadline - time.monotonic()))


def _redirect_target(current: Target, location: str, policy: GuardPolicy) -> Target:
    """The next hop, judged from scratch; a refusal names the redirect."""
    try:
        return check_url(urllib.parse.urljoin(current.url, location), policy)
    except Blocked as error:
        raise Blocked(
            error.layer, error.rule, f"redirect from {_shown(current.url)}: {error.detail}"
        ) from None


async def _read_limited(response: httpx.Response, limit: int, shown: str) -> bytes:
    too_large = _Failure(
        f"{shown}: response body exceeds max_response_bytes ({limit})",
        retry="never",
        why="the response would be as large again",
    )
    declared = response.headers.get("content-length", "")
    # A HEAD response declares the length of the GET's body, which is not sent.
    if response.request.method != "HEAD" and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _unexpected_status(spec: RequestSpec, reply: _Reply) -> _Failure:
    status = reply.status
    excerpt = _text(reply)[:_EXCERPT] if reply.content else ""
    message = (
        f"{spec.method} {_shown(spec.url)}: HTTP {status} {reply.reason}"
        f" (expected {spec.expect})" + (f": {excerpt}" if excerpt else "")
    )
    if status == 429 or status >= 500:
        return _Failure(
            message, retry="sent", retry_after=_retry_after(reply.headers.get("retry-after"))
        )
    why = f"HTTP {status} is not transient (only 429 and 5xx answers are retried)"
    return _Failure(message, retry="never", why=why)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _shown(url: str) -> str:
    """A URL for messages: no userinfo, no query (either may hold a secret)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _text(reply: _Reply) -> str:
    charset = reply.charset or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    return reply.content.decode(charset, errors="replace")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_body(reply: _Reply) -> Json:
    """JSON bodies parsed (when they parse), others as text; an empty body is null."""
    if not reply.content:
        return None
    media = reply.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            parsed: Json = json.loads(reply.content, parse_constant=_reject_constant)
        except ValueError:
            pass
        else:
            return parsed
    return _text(reply)
