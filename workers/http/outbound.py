"""The SSRF guard for clients other than the HTTP worker: an httpx2 transport.

The agent's LLM SDK (openai) runs on httpx2, which the worker's pinned pool (httpx) does
not serve. `guarded_httpx2_client` gives it the same protection: every request (and
every redirect hop, which httpx2 sends through the transport again) is judged by the
guard, its host resolved once, every address judged, and the connection pinned to a
checked address by a network backend that refuses anything unpinned (no rebinding
window). Proxies from the environment are ignored.
"""

from __future__ import annotations

import typing

import httpcore2
import httpx2

from aob.workers.http.guard import Blocked, GuardPolicy, IPAddress, check_address, check_url
from aob.workers.http.resolver import ResolveError, Resolver, SystemResolver
from aob.workers.http.transport import PINS, pinned


class GuardRefused(httpx2.ConnectError):
    """The guard refused a request (`blocked` says why); nothing was sent."""

    def __init__(self, blocked: Blocked, request: httpx2.Request) -> None:
        super().__init__(str(blocked), request=request)
        self.blocked = blocked


class _PinnedBackend2(httpcore2.AsyncNetworkBackend):
    """httpcore2's counterpart of `transport.PinnedBackend`."""

    def __init__(self) -> None:
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        addresses = PINS.get().get((host, port))
        if not addresses:
            raise httpcore2.ConnectError(
                f"refused: {host}:{port} was not checked by the SSRF guard"
            )
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as failure:
                error = failure
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx2.AsyncBaseTransport):
    """httpx2's transport over a pinned pool; each request judged before it is sent."""

    def __init__(self, policy: GuardPolicy, resolver: Resolver, limits: httpx2.Limits) -> None:
        self.policy = policy
        self.resolver = resolver
        self._inner = httpx2.AsyncHTTPTransport(trust_env=False, limits=limits)
        self._inner._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend2(),
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            addresses = await guarded_addresses(str(request.url), self.policy, self.resolver)
        except Blocked as blocked:
            raise GuardRefused(blocked, request) from None
        except ResolveError as error:
            raise httpx2.ConnectError(str(error), request=request) from None
        host, port = request.url.host, request.url.port or _DEFAULT_PORTS[request.url.scheme]
        with pinned(host, port, addresses):
            return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


_DEFAULT_PORTS = {"http": 80, "https": 443}


async def guarded_addresses(url: str, policy: GuardPolicy, resolver: Resolver) -> list[IPAddress]:
    """The checked addresses `url` may be sent to. Raises Blocked or ResolveError."""
    target = check_url(url, policy)
    if target.address is not None:
        return [target.address]
    addresses = await resolver.resolve(target.host, target.port)
    if not target.trusted:
        for address in addresses:
            check_address(address, policy, host=target.host)
    return addresses


def guarded_httpx2_client(
    policy: GuardPolicy,
    *,
    resolver: Resolver | None = None,
    max_connections: int = 100,
    max_keepalive_connections: int = 20,
    timeout: float = 60.0,
) -> httpx2.AsyncClient:
    """An httpx2 client whose every connection the SSRF guard checked and pinned."""
    limits = httpx2.Limits(
        max_connections=max_connections, max_keepalive_connections=max_keepalive_connections
    )
    transport = GuardedTransport(policy, resolver or SystemResolver(), limits)
    return httpx2.AsyncClient(
        transport=transport, trust_env=False, follow_redirects=False, timeout=timeout
    )
