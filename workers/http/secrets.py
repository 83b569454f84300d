"""Secret bindings: a node names a secret; the worker decides where its value may go.

The operator binds each secret (`AOB_HTTP_SECRETS`) to one header, a list of hosts
(optionally with a port) and a list of tenants. A node only names secrets
(`config.secrets: ["github"]`); the value never enters template data, the rendered
config, the request spec, an event or an error. The worker adds the header to a
request just before sending it, and only when the connection's host is bound:

- the first request toward an unbound host is refused (final, naming secret and host);
- a redirect hop gets the header only on the first hop's origin (scheme, host, port)
  and only if that host is bound: anywhere else it is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aob.workers.http.config import RESERVED_HEADERS, ConfigError
from aob.workers.http.guard import Target, parse_host_port
from aob.workers.http.settings import SecretBinding

DEFAULT_TENANT = "default"
ALL_TENANTS = "*"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class SecretRefused(Exception):
    """A bound secret was asked for toward a host it is not bound to: final."""


@dataclass(frozen=True, slots=True)
class Bound:
    """One secret as the transport uses it."""

    name: str
    header: str
    header_value: str
    value: str
    hosts: frozenset[tuple[str, int | None]]
    tenants: frozenset[str]

    def allows_tenant(self, tenant: str) -> bool:
        return ALL_TENANTS in self.tenants or tenant in self.tenants

    def allows(self, target: Target) -> bool:
        return (target.host, None) in self.hosts or (target.host, target.port) in self.hosts


class SecretBindings:
    """Every bound secret of a worker. Construction validates (ValueError at startup)."""

    def __init__(self, bindings: Mapping[str, SecretBinding]) -> None:
        self._bound = {name: _bound(name, binding) for name, binding in bindings.items()}

    def values(self) -> list[str]:
        """Every value the redactor must hide: the secrets and their header values."""
        return [v for b in self._bound.values() for v in (b.value, b.header_value)]

    def for_node(self, names: Sequence[str], tenant: str) -> tuple[Bound, ...]:
        """The bindings a node of `tenant` asked for. Raises ConfigError; an unknown
        name and another tenant's secret read alike (no probing of other tenants)."""
        chosen = []
        for name in dict.fromkeys(names):
            bound = self._bound.get(name)
            if bound is None or not bound.allows_tenant(tenant):
                raise ConfigError(
                    f"config.secrets: no secret named {name!r} is bound for tenant {tenant!r}"
                    " (the operator binds secrets in AOB_HTTP_SECRETS)"
                )
            chosen.append(bound)
        return tuple(chosen)


def check_headers(bindings: Iterable[Bound], headers: Iterable[tuple[str, str]]) -> None:
    """A node may not also set a header a secret it asked for fills."""
    names = {name.lower() for name, _ in headers}
    for bound in bindings:
        if bound.header.lower() in names:
            raise ConfigError(
                f"config.headers: {bound.header} is filled by the secret {bound.name!r}"
            )


def refuse_unbound(bindings: Iterable[Bound], target: Target) -> None:
    """Raises SecretRefused when a secret is not bound to the request's host."""
    for bound in bindings:
        if not bound.allows(target):
            port = f":{target.port}"
            host = f"[{target.host}]" if ":" in target.host else target.host
            raise SecretRefused(
                f"secret {bound.name!r} is not bound to host {host}{port}:"
                " the request was not sent (AOB_HTTP_SECRETS names its hosts)"
            )


def injected(
    bindings: Iterable[Bound], target: Target, first: Target
) -> tuple[tuple[str, str], ...]:
    """The secret headers to add to a request to `target` in a chain that began at
    `first`: only on the first hop's origin, only toward bound hosts."""
    if target.origin != first.origin:
        return ()
    return tuple((b.header, b.header_value) for b in bindings if b.allows(target))


def _bound(name: str, binding: SecretBinding) -> Bound:
    where = f"AOB_HTTP_SECRETS.{name}"
    if not _TOKEN.fullmatch(binding.header) or binding.header.lower() in RESERVED_HEADERS:
        raise ValueError(f"{where}.header: {binding.header!r} cannot carry a secret")
    value = binding.value.get_secret_value()
    header_value = binding.format.replace("{value}", value)
    if any(c in header_value for c in "\r\n\0") or not header_value.isascii():
        raise ValueError(f"{where}: the header value must be ASCII without line breaks")
    hosts = []
    for entry in binding.hosts:
        try:
            hosts.append(parse_host_port(entry))
        except ValueError as error:
            raise ValueError(f"{where}.hosts: {error}") from None
    return Bound(
        name, binding.header, header_value, value, frozenset(hosts), frozenset(binding.tenants)
    )
