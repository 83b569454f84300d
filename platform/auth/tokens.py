"""API tokens: random, shown once, stored only as a hash, found by their id.

A token reads `aob_<id>_<secret>`: `id` (12 hex digits) is the public handle the
store looks the token up by and admins revoke it by; `secret` is 32 random bytes.
The store keeps SHA-256 of the secret. A fast hash is enough here, unlike for
passwords: a 256-bit random secret cannot be guessed, so a stolen table gives an
attacker no search to speed up, and each request costs a microsecond rather than the
tens of milliseconds a password KDF (scrypt) would. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Final

from aob.platform.auth.principal import Principal

PREFIX: Final = "aob_"
_FORMAT: Final = re.compile(r"^aob_([0-9a-f]{12})_([A-Za-z0-9_-]{43})\Z")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the store keeps of a token (never the token itself)."""

    token_id: str
    name: str
    tenant: str
    roles: frozenset[str]
    secret_hash: str
    created_at: int  # epoch ms
    created_by: str
    expires_at: int | None = None
    revoked_at: int | None = None
    description: str = field(default="")

    def principal(self) -> Principal:
        return Principal(self.name, self.roles, self.tenant, via="token")

    def valid_at(self, now_ms: int) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now_ms < self.expires_at)

    def public(self) -> dict[str, object]:
        """The record as admins see it: everything but the hash."""
        return {
            "token_id": self.token_id,
            "name": self.name,
            "tenant": self.tenant,
            "roles": sorted(self.roles),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "description": self.description,
        }


def new_token() -> tuple[str, str, str]:
    """A fresh token: (the token to show once, its id, the hash to store)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{PREFIX}{token_id}_{secret}", token_id, hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    match = _FORMAT.match(token)
    return (match[1], match[2]) if match else None


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def looks_like_token(credential: str) -> bool:
    return credential.startswith(PREFIX)
