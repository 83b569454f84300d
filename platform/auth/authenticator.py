"""Turns a bearer credential into a `Principal`; issues and revokes API tokens."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from aob.platform.auth.jwt import JwtVerifier, Unauthenticated
from aob.platform.auth.principal import Principal, check_name, check_roles, check_tenant
from aob.platform.auth.store import TokenStore
from aob.platform.auth.tokens import (
    TokenRecord,
    looks_like_token,
    new_token,
    parse_token,
    secret_matches,
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# Token records held at most, least recently used dropped first.
CACHED_TOKENS_MAX = 10_000


class Authenticator:
    """API tokens from `tokens`; JWTs from an identity provider when `jwt` is set.

    With `cache_seconds` > 0, a token's stored record is reused for that long instead
    of read from the store on every request (a store read was half of a submit's HTTP
    cost). The secret, expiry and revocation are still checked against the record on
    every request; a revocation made through this authenticator counts at once, one
    made elsewhere (another API process, the admin command) within `cache_seconds`.
    """

    def __init__(
        self,
        tokens: TokenStore,
        jwt: JwtVerifier | None = None,
        clock_ms: Callable[[], int] = _now_ms,
        *,
        cache_seconds: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tokens = tokens
        self.jwt = jwt
        self.clock_ms = clock_ms
        self.cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._records: OrderedDict[str, tuple[float, TokenRecord]] = OrderedDict()
        # One store read per token at a time: the requests that find its record stale
        # together (dozens, under load) wait for the same read.
        self._reading: dict[str, asyncio.Future[TokenRecord | None]] = {}
        self._revocations = 0  # revocations through this authenticator so far

    async def authenticate(self, credential: str) -> Principal:
        """The principal `credential` proves; raises Unauthenticated."""
        if looks_like_token(credential):
            return await self._token(credential)
        if self.jwt is not None and credential.count(".") == 2:
            return await self.jwt.verify(credential)
        accepted = "an API token (aob_...)" + (" or a JWT" if self.jwt else "")
        raise Unauthenticated(f"unrecognized credential: expected {accepted}")

    async def _token(self, token: str) -> Principal:
        parsed = parse_token(token)
        if parsed is None:
            raise Unauthenticated("malformed API token")
        token_id, secret = parsed
        record = await self._record(token_id)
        # One message for unknown and wrong: nothing tells a prober which ids exist.
        if record is None or not secret_matches(secret, record.secret_hash):
            raise Unauthenticated("unknown API token")
        if record.revoked_at is not None:
            raise Unauthenticated(f"API token {token_id} was revoked")
        if not record.valid_at(self.clock_ms()):
            raise Unauthenticated(f"API token {token_id} expired")
        return record.principal()

    async def _record(self, token_id: str) -> TokenRecord | None:
        """The token's stored record, from the cache while it is fresh. Unknown ids are
        never cached: a token issued by another process works at once."""
        if self.cache_seconds <= 0:
            return await self.tokens.get(token_id)
        now = self._monotonic()
        cached = self._records.get(token_id)
        if cached is not None and now - cached[0] < self.cache_seconds:
            self._records.move_to_end(token_id)
            return cached[1]
        reading = self._reading.get(token_id)
        if reading is not None:
            return await asyncio.shield(reading)
        reading = asyncio.get_running_loop().create_future()
        self._reading[token_id] = reading
        revocations = self._revocations
        try:
            record = await self.tokens.get(token_id)
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError):
                reading.cancel()
            else:
                reading.set_exception(error)
                reading.exception()  # retrieved: no warning when nobody else waited
            raise
        finally:
            self._reading.pop(token_id, None)
        reading.set_result(record)
        if revocations == self._revocations:  # else the record read may predate it
            self._remember(token_id, now, record)
        return record

    def _remember(self, token_id: str, read_at: float, record: TokenRecord | None) -> None:
        if record is None:
            self._records.pop(token_id, None)
            return
        self._records[token_id] = (read_at, record)
        self._records.move_to_end(token_id)
        if len(self._records) > CACHED_TOKENS_MAX:
            self._records.popitem(last=False)

    async def issue(
        self,
        name: str,
        tenant: str,
        roles: Iterable[str],
        *,
        created_by: str,
        expires_in_s: int | None = None,
        description: str = "",
    ) -> tuple[str, TokenRecord]:
        """A new token (shown to the caller once) and its stored record."""
        if expires_in_s is not None and expires_in_s <= 0:
            raise ValueError("a token's lifetime must be positive")
        if len(description) > 500:
            raise ValueError("a token's description has at most 500 characters")
        token, token_id, secret_hash = new_token()
        now = self.clock_ms()
        record = TokenRecord(
            token_id=token_id,
            name=check_name(name),
            tenant=check_tenant(tenant),
            roles=check_roles(roles),
            secret_hash=secret_hash,
            created_at=now,
            created_by=created_by,
            expires_at=None if expires_in_s is None else now + expires_in_s * 1000,
            description=description,
        )
        await self.tokens.add(record)
        return token, record

    async def revoke(self, token_id: str, tenant: str | None = None) -> TokenRecord | None:
        revoked = await self.tokens.revoke(token_id, self.clock_ms(), tenant)
        if revoked is not None:
            self._revocations += 1
            self._records.pop(token_id, None)  # refused from the next request on
        return revoked

    async def listing(self, tenant: str | None = None) -> list[TokenRecord]:
        return await self.tokens.listing(tenant)
