"""Bearer JWTs from an identity provider (OIDC), for deployments that have one.

The signature is checked against the provider's JWKS (fetched from its URL, cached,
re-fetched when a token names an unknown key id) or a configured static key; then
expiry (required), issuer and audience. The principal comes from claims: its name
(`sub` by default), roles (`roles`; a dotted path reaches nested claims such as
Keycloak's `realm_access.roles`) and tenant (`tenant`, else a configured default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from aob.platform.auth.principal import ROLE_NAME, TENANT_NAME, Principal


class Unauthenticated(Exception):
    """No valid credential; the message says what was wrong (never the credential)."""


@dataclass(frozen=True, slots=True)
class JwtConfig:
    jwks_url: str | None = None
    key: str | None = None  # PEM public key (or an HMAC secret, with HS* algorithms)
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    issuer: str | None = None
    audience: str | None = None
    name_claim: str = "sub"
    roles_claim: str = "roles"
    tenant_claim: str = "tenant"
    default_tenant: str | None = None
    leeway_s: int = 30
    # A token naming an unknown key id re-fetches the JWKS at most this often.
    jwks_refetch_s: float = 30

    def __post_init__(self) -> None:
        if (self.jwks_url is None) == (self.key is None):
            raise ValueError("JWT validation needs exactly one of a JWKS URL and a static key")


class JwtVerifier:
    def __init__(self, config: JwtConfig) -> None:
        self.config = config
        self._jwks = (
            jwt.PyJWKClient(
                config.jwks_url,
                cache_keys=True,
                lifespan=300,
                timeout=10,
                cooldown_duration=config.jwks_refetch_s,
            )
            if config.jwks_url
            else None
        )

    async def verify(self, token: str) -> Principal:
        config = self.config
        try:
            key: Any = config.key
            if self._jwks is not None:
                # urllib underneath: fetch off the event loop (cached after the first).
                key = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
            claims = jwt.decode(
                token,
                key,
                algorithms=list(config.algorithms),
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_s,
                options={
                    "require": ["exp"],
                    "verify_aud": config.audience is not None,
                    "verify_iss": config.issuer is not None,
                },
            )
        except jwt.PyJWKClientError as error:
            raise Unauthenticated(f"cannot verify the JWT's signing key: {error}") from None
        except jwt.PyJWTError as error:  # bad signature, claims, key type, ...
            raise Unauthenticated(f"invalid JWT: {error}") from None
        return self._principal(claims)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        config = self.config
        name = claim(claims, config.name_claim)
        if not isinstance(name, str) or not name or len(name) > 128 or not name.isprintable():
            raise Unauthenticated(f"the JWT's {config.name_claim!r} claim is not a usable name")
        tenant = claim(claims, config.tenant_claim) or config.default_tenant
        if not isinstance(tenant, str) or not TENANT_NAME.match(tenant):
            raise Unauthenticated(f"the JWT has no valid {config.tenant_claim!r} claim (tenant)")
        raw = claim(claims, config.roles_claim) or []
        if isinstance(raw, str):
            raw = raw.split()
        roles = frozenset(r for r in raw if isinstance(r, str) and ROLE_NAME.match(r))
        return Principal(name, roles, tenant, via="jwt")


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at a dotted `path`, or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value
