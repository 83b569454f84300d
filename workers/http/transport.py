"""The shared HTTP client, whose connections go only to addresses the guard checked.

The worker resolves a name once, judges every address, and *pins* the checked
addresses for the request's (host, port) in a context variable. The network backend
under the client's one connection pool reads that pin when it opens a connection and
connects to a pinned address; a connection to anything unpinned is refused. The URL
keeps the host name, so TLS sends it as SNI and verifies the certificate against it,
and the Host header carries it: there is no second lookup, so no DNS-rebinding window.

A pooled keep-alive connection is reused only for the same (scheme, host, port), and
it was opened to an address that was checked under the same policy.

Proxies from the environment are ignored (`trust_env=False`, and the pool has no proxy).

httpx logs every request's full URL (whose query may hold a key) and httpcore, at
DEBUG, every response's headers (Set-Cookie): their records for pinned requests are
dropped, and the worker logs its own, redacted.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from types import MappingProxyType

import httpcore
import httpx

from aob.workers.http.guard import IPAddress

Pins = Mapping[tuple[str, int], Sequence[IPAddress]]
_PINS: ContextVar[Pins] = ContextVar("aob_http_pins", default=MappingProxyType({}))
PINS = _PINS  # for the httpx2 transport (outbound)


@contextlib.contextmanager
def pinned(host: str, port: int, addresses: Sequence[IPAddress]) -> Iterator[None]:
    """Within the block, connections to (host, port) go to `addresses` (in order)."""
    token = _PINS.set({**_PINS.get(), (host, port): tuple(addresses)})
    try:
        yield
    finally:
        _PINS.reset(token)


_LIBRARY_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


class _DropPinnedRequestRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _PINS.get()


_LOG_FILTER = _DropPinnedRequestRecords()


def _quieten_library_logs() -> None:
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to the addresses pinned for the current request."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = _PINS.get().get((host, port))
        if not addresses:
            raise httpcore.ConnectError(f"refused: {host}:{port} was not checked by the SSRF guard")
        error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:  # like a browser: the next address if one fails
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as failure:
                error = failure
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request/response mapping, error translation) over a
    connection pool whose network backend is pinned.

    httpx does not take a network backend, so the pool it built is replaced; the
    rebinding tests fail if that ever stops taking effect.
    """

    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PinnedBackend(),
        )


def pinned_client(
    ssl_context: ssl.SSLContext, *, max_connections: int, max_keepalive_connections: int
) -> httpx.AsyncClient:
    """The one client (one connection pool) a worker shares between its tasks."""
    _quieten_library_logs()
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_keepalive_connections
    )
    return httpx.AsyncClient(
        transport=_PinnedTransport(ssl_context, limits),
        trust_env=False,
        follow_redirects=False,
    )
