"""The SSRF guard on its own: address table, host spellings, host, path and port rules."""

# Look-alike characters (fullwidth digits, ...) are the point of several cases here.
# ruff: noqa: RUF001

from __future__ import annotations

import ipaddress

import pytest

from aob.workers.http.guard import (
    Blocked,
    GuardPolicy,
    Layer,
    address_rule,
    check_address,
    check_url,
    judged_path,
    normalise_host,
)

POLICY = GuardPolicy.build()


def blocked(url: str, policy: GuardPolicy = POLICY) -> Blocked:
    with pytest.raises(Blocked) as caught:
        check_url(url, policy)
    return caught.value


# --- the address table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "this-network"),
        ("10.1.2.3", "private-rfc1918"),
        ("172.16.0.1", "private-rfc1918"),
        ("172.31.255.255", "private-rfc1918"),
        ("192.168.1.1", "private-rfc1918"),
        ("100.64.0.1", "shared-cgnat"),
        ("100.127.255.254", "shared-cgnat"),
        ("100.100.100.200", "cloud-metadata"),
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("169.254.169.254", "cloud-metadata"),
        ("169.254.1.1", "link-local"),
        ("192.0.0.8", "ietf-protocol-assignments"),
        ("192.0.0.192", "cloud-metadata"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("192.88.99.1", "6to4-relay-anycast"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "ipv4-mapped:loopback"),
        ("::ffff:10.0.0.1", "ipv4-mapped:private-rfc1918"),
        ("::ffff:169.254.169.254", "ipv4-mapped:cloud-metadata"),
        ("::ffff:0:127.0.0.1", "ipv4-translated:loopback"),
        ("::127.0.0.1", "ipv4-compatible"),
        ("::8.8.8.8", "ipv4-compatible"),
        ("64:ff9b::7f00:1", "nat64:loopback"),
        ("64:ff9b::a9fe:a9fe", "nat64:cloud-metadata"),
        ("64:ff9b:1::1", "nat64-local-use"),
        ("2002:7f00:1::", "6to4:loopback"),
        ("2002:c0a8:101::1", "6to4:private-rfc1918"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "teredo"),  # client 127.0.0.1
        ("2001:2::1", "benchmarking"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("2001:10::1", "orchid"),
        ("100::1", "discard-only"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fd00:ec2::254", "cloud-metadata"),
        ("fe80::1", "link-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("4000::1", "reserved"),
        ("1::1", "reserved"),
    ],
)
def test_non_public_addresses_are_named_by_the_table(address, rule):
    assert address_rule(ipaddress.ip_address(address)) == rule


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "100.63.255.255",
        "100.128.0.0",
        "172.32.0.1",
        "198.20.0.1",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "2a00:1450:4001::1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses_pass(address):
    assert address_rule(ipaddress.ip_address(address)) is None


def test_is_global_alone_would_let_loopback_through():
    """Why the guard keeps its own table."""
    for spelling in ("64:ff9b::7f00:1", "2002:7f00:1::", "::127.0.0.1"):
        address = ipaddress.ip_address(spelling)
        assert address.is_global, spelling  # Python says public...
        assert address_rule(address) is not None, spelling  # ...the guard does not


def test_scoped_ipv6_addresses_are_refused():
    assert address_rule(ipaddress.ip_address("2606:4700::1%eth0")) == "ipv6-zone-id"


# --- host spellings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.0000.0000.0001", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x0", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("０x７f.1", "127.0.0.1"),  # fullwidth
        ("１２７．０．０．１", "127.0.0.1"),  # fullwidth digits and dots
        ("127。0。0。1", "127.0.0.1"),  # ideographic full stops
        ("%31%32%37.0.0.1", "127.0.0.1"),  # percent-encoded
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("[::1]", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("[::ffff:7f00:1]", "::ffff:7f00:1"),
    ],
)
def test_numeric_spellings_become_addresses(spelling, address):
    assert normalise_host(spelling) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("LOCALHOST.", "localhost"),
        ("ｌｏｃａｌｈｏｓｔ", "localhost"),  # fullwidth letters
        ("ⓛⓞⓒⓐⓛⓗⓞⓢⓣ", "localhost"),  # circled letters
        ("local\u00adhost", "localhost"),  # soft hyphen is dropped by UTS #46
        ("bücher.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("my_service.example", "my_service.example"),
        ("1x.example", "1x.example"),  # ends in a name, not a number
    ],
)
def test_names_are_normalised(spelling, name):
    assert normalise_host(spelling) == name


@pytest.mark.parametrize(
    ("spelling", "rule"),
    [
        ("256.0.0.1", "malformed-ipv4"),
        ("1.2.3.4.5", "malformed-ipv4"),
        ("0x100000000", "malformed-ipv4"),
        ("08.0.0.1", "malformed-ipv4"),  # 8 is no octal digit
        ("example.123", "malformed-ipv4"),  # ends in a number, so it must be an address
        ("xn--localhost-", "malformed-host"),  # not a valid A-label
        ("xn--zz", "malformed-host"),
        ("a..b", "malformed-host"),
        ("exa mple.com", "malformed-host"),
        ("exa%00mple.com", "malformed-host"),
        ("evil.com／admin", "malformed-host"),  # fullwidth solidus maps to '/'
        ("[::1%25lo]", "ipv6-zone-id"),
        ("[not-an-address]", "malformed-host"),
        ("a" * 64 + ".example", "malformed-host"),
    ],
)
def test_hosts_no_resolver_should_see_are_refused(spelling, rule):
    with pytest.raises(Blocked) as caught:
        normalise_host(spelling)
    assert (caught.value.layer, caught.value.rule) == (Layer.PROTOCOL, rule)


# --- URLs: every layer ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://0177.0.0.1/", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://0x7f000001/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "ipv4-mapped:loopback"),
        ("http://[::127.0.0.1]/", "ipv4-compatible"),
        ("http://[64:ff9b::7f00:1]/", "nat64:loopback"),
        ("http://[2002:7f00:1::]/", "6to4:loopback"),
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "teredo"),
        ("http://[fc00::1]/", "unique-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://100.64.0.1/", "shared-cgnat"),
        ("http://198.18.0.1/", "benchmarking"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://255.255.255.255/", "broadcast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "cloud-metadata"),
        ("http://１２７．０．０．１/", "loopback"),
        ("http://10.0.0.1:8080/", "private-rfc1918"),
    ],
)
def test_address_literals_are_blocked_at_the_ip_layer(url, rule):
    error = blocked(url)
    assert (error.layer, error.rule) == (Layer.IP, rule)
    assert f"ip layer, rule {rule})" in str(error)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://localhost/", "localhost"),
        ("http://LOCALHOST./", "localhost"),
        ("http://ｌｏｃａｌｈｏｓｔ/", "localhost"),
        ("http://api.localhost/", "localhost"),
        ("http://localhost.localdomain/", "localhost"),
        ("http://ip6-localhost/", "localhost"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud-metadata"),
        ("http://METADATA.Google.Internal./", "cloud-metadata"),
        ("http://metadata/", "cloud-metadata"),
        ("http://instance-data.ec2.internal/", "cloud-metadata"),
    ],
)
def test_local_and_metadata_names_are_blocked_at_the_host_layer(url, rule):
    error = blocked(url)
    assert (error.layer, error.rule) == (Layer.HOST, rule)


def test_operators_can_deny_more_names():
    policy = GuardPolicy.build(deny_hosts=["Internal.Example."])
    error = blocked("http://internal.example/", policy)
    assert (error.layer, error.rule) == (Layer.HOST, "denied-host")


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("ftp://example.com/", "scheme"),
        ("//example.com/", "scheme"),
        ("example.com/path", "scheme"),
        ("http://user:pass@example.com/", "userinfo"),
        ("http://user@example.com/", "userinfo"),
        ("http://example.com@127.0.0.1/", "userinfo"),
        ("http://example.com:22/", "port"),
        ("http://example.com:6379/", "port"),
        ("https://example.com:0/", "port"),
        ("http://example.com:99999/", "port"),
        ("http://example.com:8o/", "port"),
        ("http:///path", "malformed-url"),
        ("http://exa mple.com/", "malformed-url"),
        ("http://example.com/\n", "malformed-url"),
        ("http://[::1/", "malformed-url"),
        ("http://example.com\\@127.0.0.1/", "userinfo"),
    ],
)
def test_protocol_layer(url, rule):
    error = blocked(url)
    assert (error.layer, error.rule) == (Layer.PROTOCOL, rule)


def test_userinfo_refusal_does_not_echo_the_password():
    assert "s3cret-pw" not in str(blocked("http://admin:s3cret-pw@example.com/"))


def test_port_policy_is_configurable():
    policy = GuardPolicy.build(ports=["443", "9000-9100"])
    assert check_url("https://example.com/", policy).port == 443
    assert check_url("http://example.com:9050/", policy).port == 9050
    assert blocked("http://example.com/", policy).rule == "port"  # 80 is not in the policy
    assert blocked("http://example.com:9101/", policy).rule == "port"
    with pytest.raises(ValueError, match="port"):
        GuardPolicy.build(ports=["70000"])
    with pytest.raises(ValueError, match="port"):
        GuardPolicy.build(ports=["90-80"])


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        "/admin/",
        "/admin/users",
        "/ADMIN",
        "/%61dmin",
        "/%2e%2e/admin",
        "/public/%2e%2e/admin",
        "/public/..%2Fadmin",
        "/public%2F..%2Fadmin",
        "/public/%252e%252e/admin",  # double-encoded
        "/./admin",
        "//admin",
        "/public/..\\admin",
        "/admin;jsessionid=1",
        "/public/..;/admin",
        "/admin./",
        "/.env",
        "/.%65nv",
        "/app/../.env",
        "/api/keys",
        "/api/v2/../keys",
        "/api//keys/1",
        "/API/Keys",
    ],
)
def test_denied_paths_are_found_after_decoding_and_dot_segment_removal(path):
    error = blocked(f"https://example.com{path}")
    assert (error.layer, error.rule) == (Layer.PATH, "deny-list")


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/administrator",
        "/public/admin",
        "/api/keyspace",
        "/env",
        "/.environment",
        "/api/v1/keys",
        "/a/../b",
    ],
)
def test_other_paths_pass(path):
    assert check_url(f"https://example.com{path}", POLICY).path == path


def test_deny_list_is_configurable():
    policy = GuardPolicy.build(deny_paths=["/internal/"])
    assert check_url("https://example.com/admin", policy).path == "/admin"
    assert blocked("https://example.com/x/../Internal/y", policy).layer == Layer.PATH


def test_control_characters_in_paths_are_refused():
    error = blocked("https://example.com/admin%00.png")
    assert (error.layer, error.rule) == (Layer.PATH, "control-characters")


def test_judged_path_is_what_a_lenient_server_would_serve():
    assert judged_path("/a/b/../c/./%2e%2e/D;x//e/") == "/a/d/e"


# --- the allow list ---------------------------------------------------------------------


def test_allowed_networks_let_their_addresses_through_and_nothing_else():
    policy = GuardPolicy.build(allow=["127.0.0.1", "10.1.0.0/16", "fd00::/8"])
    assert check_url("http://127.0.0.1/", policy).address == ipaddress.ip_address("127.0.0.1")
    assert check_url("http://[::ffff:127.0.0.1]/", policy).host == "::ffff:7f00:1"
    check_address(ipaddress.ip_address("10.1.200.3"), policy)
    check_address(ipaddress.ip_address("fd00::5"), policy)
    assert blocked("http://127.0.0.2/", policy).rule == "loopback"
    with pytest.raises(Blocked, match="private-rfc1918"):
        check_address(ipaddress.ip_address("10.2.0.1"), policy)


def test_allowed_names_are_trusted_and_skip_the_host_rules():
    policy = GuardPolicy.build(allow=["LocalHost.", "svc.internal"])
    target = check_url("http://localhost/", policy)
    assert target.trusted
    assert target.host == "localhost"
    assert check_url("http://svc.internal/", policy).trusted
    assert not check_url("http://other.internal/", policy).trusted
    assert blocked("http://localhost/admin", policy).layer == Layer.PATH  # paths still judged


def test_allow_entries_are_validated():
    with pytest.raises(ValueError, match="bad host"):
        GuardPolicy.build(allow=["exa mple"])
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        GuardPolicy.build(allow=["10.0.0.0/33"])


def test_target_url_is_canonical():
    target = check_url("HTTPS://Bücher.Example.:443/a%20b?q=1#frag", POLICY)
    assert target.url == "https://xn--bcher-kva.example:443/a%20b?q=1"
    assert target.origin == ("https", "xn--bcher-kva.example", 443)
    assert (
        check_url("http://[2606:4700::1111]:8080/", POLICY).url == "http://[2606:4700::1111]:8080/"
    )


def test_a_host_port_entry_allows_exactly_that_host_and_port():
    policy = GuardPolicy.build(allow=["127.0.0.1:8808", "[::1]:9000", "llm.internal:8000"])
    assert policy.allow_endpoints == frozenset(
        {("127.0.0.1", 8808), ("::1", 9000), ("llm.internal", 8000)}
    )
    assert check_url("http://127.0.0.1:8808/v1", policy).port == 8808  # not in the port policy
    assert check_url("http://[::1]:9000/", policy).host == "::1"
    named = check_url("http://LLM.internal:8000/v1", policy)
    assert named.trusted  # its resolved addresses are allowed, at that port only
    assert blocked("http://127.0.0.1:8809/", policy).rule == "port"
    assert blocked("http://127.0.0.1:80/", policy).rule == "loopback"
    assert blocked("http://[::1]:80/", policy).rule == "loopback"
    assert not check_url("http://llm.internal:80/", policy).trusted
    with pytest.raises(ValueError, match="bad port"):
        GuardPolicy.build(allow=["127.0.0.1:0"])
    with pytest.raises(ValueError, match="bad port"):
        GuardPolicy.build(allow=["[::1]:"])
