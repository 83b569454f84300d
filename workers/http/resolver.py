"""The resolver port: names to addresses, once per request, for the guard to judge."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Protocol

from aob.workers.http.guard import IPAddress


class ResolveError(Exception):
    """A name could not be resolved."""


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` resolves to, in the resolver's order (never empty);
        raises ResolveError."""
        ...


class SystemResolver:
    """The operating system's resolver (getaddrinfo: /etc/hosts, DNS, ...)."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            raise ResolveError(f"cannot resolve {host!r}: {error}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        if not addresses:
            raise ResolveError(f"{host!r} resolves to no address")
        return addresses
