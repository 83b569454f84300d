"""JWT bearer validation with locally generated keys: a static key, and a JWKS served
by a real HTTP server on loopback (key rotation included)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from aob.platform.auth import Authenticator, JwtConfig, JwtVerifier, SqliteTokenStore
from aob.platform.auth.jwt import Unauthenticated

ISSUER = "https://idp.example"
AUDIENCE = "aob"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sign(key: Any, alg: str = "RS256", kid: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "ann", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "iat": now}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa_key()


def static(key: Any, **overrides: Any) -> JwtVerifier:
    settings: dict[str, Any] = {"key": public_pem(key), "issuer": ISSUER, "audience": AUDIENCE}
    settings.update(overrides)
    return JwtVerifier(JwtConfig(**settings))


async def test_a_valid_jwt_gives_the_principal_its_claims_name(key: rsa.RSAPrivateKey) -> None:
    principal = await static(key).verify(sign(key, roles=["operator", "viewer"], tenant="acme"))
    assert (principal.name, principal.tenant, principal.via) == ("ann", "acme", "jwt")
    assert principal.roles == {"operator", "viewer"}


async def test_claims_are_mapped_as_configured(key: rsa.RSAPrivateKey) -> None:
    verifier = static(
        key,
        name_claim="preferred_username",
        roles_claim="realm_access.roles",
        tenant_claim="org",
        default_tenant="main",
    )
    token = sign(key, preferred_username="bo", realm_access={"roles": ["approver", "Bad Role"]})
    principal = await verifier.verify(token)
    assert (principal.name, principal.tenant) == ("bo", "main")
    assert principal.roles == {"approver"}
    spaced = await static(key).verify(sign(key, roles="viewer operator", tenant="t"))
    assert spaced.roles == {"viewer", "operator"}


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"exp": None}, "exp"),
        ({"aud": "other"}, "(?i)audience"),
        ({"iss": "https://evil.example"}, "(?i)issuer"),
        ({"tenant": None}, "tenant"),
        ({"tenant": "Not A Tenant"}, "tenant"),
        ({"sub": None}, "'sub' claim"),
    ],
)
async def test_invalid_claims_are_refused(
    key: rsa.RSAPrivateKey, claims: dict[str, Any], message: str
) -> None:
    token = sign(key, **({"tenant": "acme"} | claims))
    with pytest.raises(Unauthenticated, match=message):
        await static(key).verify(token)


async def test_forged_and_unsigned_tokens_are_refused(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(Unauthenticated, match="invalid JWT"):
        await static(key).verify(sign(rsa_key(), tenant="acme"))  # another key
    unsigned = jwt.encode({"sub": "ann", "tenant": "acme", "exp": 2**40}, "", algorithm="none")
    with pytest.raises(Unauthenticated, match="invalid JWT"):
        await static(key).verify(unsigned)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(Unauthenticated, match="invalid JWT"):  # ES256 allowed, wrong key type
        await static(key).verify(sign(ec_key, "ES256", tenant="acme"))
    with pytest.raises(Unauthenticated, match="invalid JWT"):  # HS256 not among the algorithms
        await static(key).verify(sign("a-shared-secret-of-32-bytes-long!", "HS256", tenant="acme"))


def test_a_jwt_config_needs_one_key_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        JwtConfig()
    with pytest.raises(ValueError, match="exactly one"):
        JwtConfig(jwks_url="http://x", key="k")


class Jwks:
    """A JWKS document served over HTTP; `keys` can change (rotation)."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.fetches = 0

    def document(self) -> bytes:
        keys = []
        for kid, key in self.keys.items():
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return json.dumps({"keys": keys}).encode()


@pytest.fixture
def jwks() -> Iterator[tuple[Jwks, str]]:
    served = Jwks()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.fetches += 1
            body = served.document()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_keys_come_from_the_providers_jwks_and_follow_rotation(
    jwks: tuple[Jwks, str],
) -> None:
    served, url = jwks
    first, second = rsa_key(), rsa_key()
    served.keys = {"k1": first}
    verifier = JwtVerifier(
        JwtConfig(jwks_url=url, issuer=ISSUER, audience=AUDIENCE, jwks_refetch_s=0)
    )
    assert (await verifier.verify(sign(first, kid="k1", tenant="acme"))).name == "ann"
    assert (await verifier.verify(sign(first, kid="k1", tenant="acme", sub="bo"))).name == "bo"
    assert served.fetches == 1  # cached
    served.keys = {"k1": first, "k2": second}  # the provider rotates in a new key
    assert (await verifier.verify(sign(second, kid="k2", tenant="acme"))).tenant == "acme"
    with pytest.raises(Unauthenticated, match="signing key"):
        await verifier.verify(sign(rsa_key(), kid="k3", tenant="acme"))


async def test_the_authenticator_routes_jwts_and_tokens(
    tmp_path: Path, key: rsa.RSAPrivateKey
) -> None:
    store = await SqliteTokenStore.open(tmp_path / "platform.db")
    try:
        auth = Authenticator(store, static(key))
        token, _ = await auth.issue("bot", "acme", ["viewer"], created_by="root")
        assert (await auth.authenticate(token)).via == "token"
        assert (await auth.authenticate(sign(key, tenant="acme"))).via == "jwt"
        with pytest.raises(Unauthenticated, match="unrecognized"):
            await auth.authenticate("opaque-secret")
    finally:
        await store.close()
