"""The SSRF guard: judges a URL and every address its host resolves to, before any connection.

Four layers, each with named rules; the first rule that matches blocks the request:

- protocol: only http and https, no userinfo, no IPv6 zone ids, ports from the policy,
  well-formed hosts;
- host: localhost aliases and cloud metadata names, compared after normalisation;
- ip: the address table below, for literal hosts and for every resolved address;
- path: a deny list, judged after percent-decoding and dot-segment removal.

Hosts are normalised the way resolvers and browsers read them (WHATWG URL host
parsing): percent-decoding, UTS #46 mapping (fullwidth characters, ideographic full
stops, case), IDNA A-labels, trailing dot; a host whose last label is a number is an
IPv4 address in any of the spellings `inet_aton` accepts (decimal, octal, hex, short
forms), so "0x7f.1" is judged as 127.0.0.1 and never reaches a resolver.

The address table is our own: `ipaddress.is_global`/`is_private` miss several IPv6 forms
that embed an IPv4 address. Operators allow specific names or networks explicitly
(`GuardPolicy.allow`), or one host at one port (`host:port`, `[v6]:port`); nothing
else that is not public gets through.

Everything here is pure: resolution and connections live in `transport`.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Layer(StrEnum):
    PROTOCOL = "protocol"
    HOST = "host"
    IP = "ip"
    PATH = "path"


class Blocked(Exception):
    """The guard refused a request: `layer` and `rule` name what refused it."""

    def __init__(self, layer: Layer, rule: str, detail: str) -> None:
        super().__init__(f"blocked by the SSRF guard ({layer} layer, rule {rule}): {detail}")
        self.layer = layer
        self.rule = rule
        self.detail = detail


# --- the address table ----------------------------------------------------------------


def _nets(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), rule) for net, rule in rows)


# Ordered: the first match names the rule, so specific entries precede their supernets.
_IPV4_TABLE = _nets(
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private-rfc1918"),
    ("100.100.100.200/32", "cloud-metadata"),  # Alibaba Cloud
    ("100.64.0.0/10", "shared-cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.169.254/32", "cloud-metadata"),  # AWS, GCP, Azure, OpenStack, ...
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private-rfc1918"),
    ("192.0.0.192/32", "cloud-metadata"),  # Oracle Cloud
    ("192.0.0.0/24", "ietf-protocol-assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4-relay-anycast"),
    ("192.168.0.0/16", "private-rfc1918"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)

_IPV6_TABLE = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "ipv4-compatible"),  # deprecated (RFC 4291); ::127.0.0.1 is loopback on some stacks
    ("64:ff9b:1::/48", "nat64-local-use"),
    ("100::/64", "discard-only"),
    ("2001::/32", "teredo"),  # tunnels to an obfuscated IPv4 client address
    ("2001:2::/48", "benchmarking"),
    ("2001:10::/28", "orchid"),
    ("2001:20::/28", "orchid-v2"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "srv6-sid"),
    ("fd00:ec2::254/128", "cloud-metadata"),  # AWS over IPv6
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)

# IPv6 forms whose traffic reaches the IPv4 address they embed: judged by that address.
# (prefix, rule, shift of the embedded 32 bits)
_EMBEDDING_IPV4 = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), "ipv4-mapped", 0),
    (ipaddress.IPv6Network("::ffff:0:0:0/96"), "ipv4-translated", 0),
    (ipaddress.IPv6Network("64:ff9b::/96"), "nat64", 0),
    (ipaddress.IPv6Network("2002::/16"), "6to4", 80),
)
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def address_rule(address: IPAddress) -> str | None:
    """The table's rule that makes `address` non-public, or None when it is public."""
    if isinstance(address, ipaddress.IPv4Address):
        return _first_match(address, _IPV4_TABLE)
    if address.scope_id:
        return "ipv6-zone-id"
    for prefix, form, shift in _EMBEDDING_IPV4:
        if address in prefix:
            embedded = ipaddress.IPv4Address((int(address) >> shift) & 0xFFFF_FFFF)
            inner = _first_match(embedded, _IPV4_TABLE)
            return f"{form}:{inner}" if inner else None
    rule = _first_match(address, _IPV6_TABLE)
    if rule is None and address not in _GLOBAL_UNICAST:
        return "reserved"
    return rule


def _first_match(address: IPAddress, table: tuple[tuple[IPNetwork, str], ...]) -> str | None:
    return next((rule for net, rule in table if address in net), None)


# --- host names -----------------------------------------------------------------------

# Names under these suffixes, or equal to them, reach the local machine or a metadata service.
LOCALHOST_NAMES = (
    "localhost",  # and every name under .localhost (RFC 6761)
    "localhost.localdomain",
    "localhost4",
    "localhost4.localdomain4",
    "localhost6",
    "localhost6.localdomain6",
    "ip6-localhost",
    "ip6-loopback",
)
METADATA_NAMES = (
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
    "metadata.tencentyun.com",
    "metadata.platformequinix.com",
)

# WHATWG forbidden domain code points, plus whitespace and controls.
_FORBIDDEN_HOST_CHARS = re.compile(r"[\x00-\x20\x7f#%/:<>?@\[\\\]^|]")
_ASCII_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_NUMBER_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


def normalise_host(raw: str) -> str | IPAddress:
    """The host as a resolver reads it: an IP address, or a lowercase A-label name
    without trailing dot. Raises Blocked (protocol layer) for hosts no resolver should see.
    """
    if raw.startswith("[") and raw.endswith("]"):
        return _ipv6_literal(raw[1:-1])
    try:
        host = urllib.parse.unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise Blocked(Layer.PROTOCOL, "malformed-host", f"host {raw!r} is not UTF-8") from None
    if _FORBIDDEN_HOST_CHARS.search(host):
        raise Blocked(Layer.PROTOCOL, "malformed-host", f"host {raw!r} has forbidden characters")
    try:
        host = idna.uts46_remap(host, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError) as error:
        raise Blocked(Layer.PROTOCOL, "malformed-host", f"host {raw!r}: {error}") from None
    if _FORBIDDEN_HOST_CHARS.search(host):  # the mapping can produce some (e.g. fullwidth '/')
        raise Blocked(Layer.PROTOCOL, "malformed-host", f"host {raw!r} has forbidden characters")
    host = host.removesuffix(".")
    labels = host.split(".")
    if _NUMBER_LABEL.fullmatch(labels[-1]):
        return _ipv4_number_form(labels, raw)
    return _a_label_name(labels, raw)


def _ipv6_literal(inner: str) -> IPAddress:
    if "%" in inner:
        raise Blocked(Layer.PROTOCOL, "ipv6-zone-id", f"IPv6 zone ids are not allowed: [{inner}]")
    try:
        return ipaddress.IPv6Address(inner)
    except ValueError:
        raise Blocked(Layer.PROTOCOL, "malformed-host", f"bad IPv6 literal [{inner}]") from None


def _ipv4_number_form(labels: list[str], raw: str) -> ipaddress.IPv4Address:
    """WHATWG's IPv4 parser, which accepts what `inet_aton` accepts: 1-4 parts, each
    decimal, octal (leading 0) or hex (0x); the last part fills the remaining bytes."""

    def malformed() -> Blocked:
        return Blocked(Layer.PROTOCOL, "malformed-ipv4", f"host {raw!r} is not a valid IPv4 number")

    if len(labels) > 4:
        raise malformed()
    numbers = []
    for label in labels:
        if label[:2].lower() == "0x":
            digits, base = label[2:] or "0", 16
        elif len(label) > 1 and label.startswith("0"):
            digits, base = label[1:], 8
        else:
            digits, base = label, 10
        try:
            numbers.append(int(digits, base))
        except ValueError:
            raise malformed() from None
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        raise malformed()
    value = last + sum(n << (8 * (3 - i)) for i, n in enumerate(leading))
    return ipaddress.IPv4Address(value)


def _a_label_name(labels: list[str], raw: str) -> str:
    encoded = []
    for label in labels:
        try:
            if label.isascii():
                if label.startswith("xn--"):
                    idna.decode(label)  # only a valid A-label gets through
                elif not _ASCII_LABEL.fullmatch(label):
                    raise idna.IDNAError(f"bad label {label!r}")
                encoded.append(label)
            else:
                encoded.append(idna.alabel(label).decode("ascii"))
        except (idna.IDNAError, UnicodeError) as error:
            raise Blocked(Layer.PROTOCOL, "malformed-host", f"host {raw!r}: {error}") from None
    name = ".".join(encoded)
    if len(name) > 253:
        raise Blocked(Layer.PROTOCOL, "malformed-host", f"host name longer than 253: {raw!r}")
    return name


def host_rule(name: str, extra_denied: Iterable[str] = ()) -> str | None:
    """The host-layer rule a normalised name breaks, or None."""
    if name in LOCALHOST_NAMES or name.endswith(".localhost"):
        return "localhost"
    if name in METADATA_NAMES:
        return "cloud-metadata"
    if name in extra_denied:
        return "denied-host"
    return None


# --- paths ----------------------------------------------------------------------------


def judged_path(path: str) -> str:
    """The path as a lenient server may read it: percent-decoded until stable,
    backslashes as slashes, `;params` dropped, dot segments removed, empty segments
    collapsed, trailing dots and spaces dropped, case folded."""
    for _ in range(8):
        decoded = urllib.parse.unquote(path)
        if decoded == path:
            break
        path = decoded
    else:
        raise Blocked(Layer.PATH, "encoding-depth", "path is percent-encoded too many times")
    if re.search(r"[\x00-\x1f\x7f]", path):
        raise Blocked(Layer.PATH, "control-characters", "path has control characters")
    segments: list[str] = []
    for segment in path.replace("\\", "/").split("/"):
        segment = segment.split(";", 1)[0]
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segment = segment.rstrip(". ") or segment
            segments.append(segment.casefold())
    return "/" + "/".join(segments)


def path_rule(path: str, denied: Iterable[str]) -> str | None:
    """The deny-list entry `path` falls under (at a segment boundary), or None."""
    judged = judged_path(path)
    for prefix in denied:
        if judged == prefix or judged.startswith(prefix.rstrip("/") + "/"):
            return prefix
    return None


# --- the policy and the URL -----------------------------------------------------------

DEFAULT_PORTS = ((80, 80), (443, 443), (8080, 8080), (8443, 8443))
DEFAULT_DENY_PATHS = ("/admin", "/.env", "/api/keys")


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """What the guard lets through besides public addresses. Build with `GuardPolicy.build`."""

    ports: tuple[tuple[int, int], ...] = DEFAULT_PORTS
    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()
    # (host, port) pairs allowed exactly: that host (a normalised name or a compressed
    # address) at that port only, whatever the port policy and the address table say.
    allow_endpoints: frozenset[tuple[str, int]] = frozenset()
    deny_hosts: frozenset[str] = frozenset()
    deny_paths: tuple[str, ...] = tuple(judged_path(p) for p in DEFAULT_DENY_PATHS)

    @classmethod
    def build(
        cls,
        *,
        ports: Iterable[str | int] = ("80", "443", "8080", "8443"),
        allow: Iterable[str] = (),
        deny_hosts: Iterable[str] = (),
        deny_paths: Iterable[str] = DEFAULT_DENY_PATHS,
    ) -> GuardPolicy:
        """`ports`: numbers or "low-high" ranges. `allow`: host names (trusted with
        every address they resolve to), IP addresses, CIDR networks, or `host:port` and
        `[v6]:port` for exactly one host at one port. Raises ValueError."""
        hosts, networks, endpoints = _parse_allow(allow)
        return cls(
            ports=tuple(_parse_port_range(p) for p in ports),
            allow_hosts=frozenset(hosts),
            allow_networks=tuple(networks),
            allow_endpoints=frozenset(endpoints),
            deny_hosts=frozenset(_config_name(h) for h in deny_hosts),
            deny_paths=tuple(judged_path(p) for p in deny_paths),
        )

    def port_allowed(self, port: int) -> bool:
        return any(low <= port <= high for low, high in self.ports)

    def network_allows(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            candidates.append(address.ipv4_mapped)
        return any(a in net for a in candidates for net in self.allow_networks)


def _parse_port_range(entry: str | int) -> tuple[int, int]:
    low, _, high = str(entry).strip().partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise ValueError(f"bad port or port range {entry!r}") from None
    if not 1 <= bounds[0] <= bounds[1] <= 65535:
        raise ValueError(f"bad port or port range {entry!r}")
    return bounds


def _parse_allow(
    entries: Iterable[str],
) -> tuple[list[str], list[IPNetwork], list[tuple[str, int]]]:
    hosts: list[str] = []
    networks: list[IPNetwork] = []
    endpoints: list[tuple[str, int]] = []
    for entry in entries:
        entry = entry.strip()
        if "/" in entry:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        host, port = parse_host_port(entry)
        if port is not None:
            endpoints.append((host, port))
        elif ":" in host or _is_address(host):
            networks.append(ipaddress.ip_network(host))
        else:
            hosts.append(host)
    return hosts, networks, endpoints


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_host_port(entry: str) -> tuple[str, int | None]:
    """A configured `host`, `host:port`, `v6`, or `[v6]:port` entry: the host as
    `Target.host` spells it (a normalised name or a compressed address) and the port,
    None when the entry names none. Raises ValueError."""
    entry = entry.strip()
    host_text, port_text = entry, ""
    if entry.startswith("[") and "]" in entry:
        end = entry.index("]")
        host_text, rest = entry[1:end], entry[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad host in configuration {entry!r}")
        port_text = rest[1:]
        if not port_text and rest:
            raise ValueError(f"bad port in configuration {entry!r}")
    elif entry.count(":") == 1:
        host_text, _, port_text = entry.partition(":")
        if not port_text:
            raise ValueError(f"bad port in configuration {entry!r}")
    port = None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"bad port in configuration {entry!r}")
        port = int(port_text)
    host = _config_host(host_text)
    return (host if isinstance(host, str) else host.compressed), port


def _config_host(entry: str) -> str | IPAddress:
    try:
        return normalise_host(f"[{entry}]" if ":" in entry else entry)
    except Blocked as error:
        raise ValueError(f"bad host in configuration {entry!r}: {error.detail}") from None


def _config_name(entry: str) -> str:
    host = _config_host(entry)
    if not isinstance(host, str):
        raise ValueError(f"expected a host name, got an address: {entry!r}")
    return host


@dataclass(frozen=True, slots=True)
class Target:
    """A URL the guard accepted at the protocol, host and path layers. Names still need
    their resolved addresses judged (`check_address`); literal addresses are judged."""

    scheme: str
    host: str  # lowercase A-label name, or an address in its compressed form
    port: int
    path: str  # as given (percent-encoded), "/" when empty
    query: str
    address: IPAddress | None = None  # set when the host is an address literal
    trusted: bool = False  # allowed by name: every address it resolves to passes

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{host}:{self.port}{self.path}{query}"


_DEFAULT_PORT = {"http": 80, "https": 443}
_URL_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def check_url(url: str, policy: GuardPolicy) -> Target:
    """Judge `url` at the protocol, host and path layers (and the ip layer when the host
    is an address literal). Raises Blocked; returns the normalised target."""
    if _URL_CONTROL.search(url):
        raise Blocked(Layer.PROTOCOL, "malformed-url", "URL has whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as error:
        raise Blocked(Layer.PROTOCOL, "malformed-url", str(error)) from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORT:
        shown = scheme or "none"
        raise Blocked(Layer.PROTOCOL, "scheme", f"only http and https are allowed, not {shown!r}")
    if "@" in parts.netloc:
        raise Blocked(Layer.PROTOCOL, "userinfo", "credentials in the URL (user@host) are refused")
    if "\\" in parts.netloc:
        raise Blocked(Layer.PROTOCOL, "malformed-url", "backslash in the URL's authority")
    host_text, port = _split_host_port(parts.netloc, scheme)
    host = normalise_host(host_text)
    shown_host = host if isinstance(host, str) else host.compressed
    endpoint = (shown_host, port) in policy.allow_endpoints
    if not endpoint and not policy.port_allowed(port):
        raise Blocked(
            Layer.PROTOCOL,
            "port",
            f"port {port} is not allowed (AOB_HTTP_PORTS lists the allowed ports;"
            " AOB_HTTP_ALLOW=host:port lets one endpoint through)",
        )
    if isinstance(host, str):
        allowed_name = endpoint or host in policy.allow_hosts
        rule = None if allowed_name else host_rule(host, policy.deny_hosts)
        if rule:
            raise Blocked(
                Layer.HOST, rule, f"host {host!r} is not allowed (AOB_HTTP_ALLOW lets it through)"
            )
        name, address = host, None
    else:
        if not endpoint:
            check_address(host, policy)
        allowed_name, name, address = False, host.compressed, host
    path = parts.path or "/"
    denied = path_rule(path, policy.deny_paths)
    if denied:
        raise Blocked(
            Layer.PATH,
            "deny-list",
            f"path {path!r} falls under the denied {denied!r} (AOB_HTTP_DENY_PATHS)",
        )
    return Target(scheme, name, port, path, parts.query, address, allowed_name)


def _split_host_port(netloc: str, scheme: str) -> tuple[str, int]:
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise Blocked(Layer.PROTOCOL, "malformed-url", f"bad authority {netloc!r}")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = netloc.partition(":")
    if not host:
        raise Blocked(Layer.PROTOCOL, "malformed-url", "URL has no host")
    if not port_text:
        return host, _DEFAULT_PORT[scheme]
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise Blocked(Layer.PROTOCOL, "port", f"bad port {port_text!r}")
    return host, int(port_text)


def check_address(address: IPAddress, policy: GuardPolicy, *, host: str | None = None) -> None:
    """Judge one address at the ip layer (for a resolved name, pass `host` for the message)."""
    if policy.network_allows(address):
        return
    rule = address_rule(address)
    if rule:
        shown = f"{host} -> {address}" if host else str(address)
        raise Blocked(
            Layer.IP,
            rule,
            f"address {shown} is not public (AOB_HTTP_ALLOW lets an address or network through)",
        )
