"""An API process reuses a token's stored record for AOB_AUTH_TOKEN_CACHE_SECONDS: a
revocation made elsewhere counts once that time is over, one made through the same
authenticator at once; secrets and expiry are checked on every request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from aob.platform.auth import (
    OPERATOR,
    Authenticator,
    SqliteTokenStore,
    TokenStore,
    Unauthenticated,
)
from aob.platform.auth.tokens import TokenRecord


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteTokenStore]:
    opened = await SqliteTokenStore.open(tmp_path / "platform.db")
    yield opened
    await opened.close()


async def test_a_revocation_made_elsewhere_counts_once_the_cache_time_is_over(
    store: SqliteTokenStore,
) -> None:
    ticks = Ticks()
    api = Authenticator(store, cache_seconds=1.0, monotonic=ticks)
    elsewhere = Authenticator(store)  # another process, or the admin command
    token, record = await elsewhere.issue("ann", "acme", [OPERATOR], created_by="root")
    assert (await api.authenticate(token)).name == "ann"

    await elsewhere.revoke(record.token_id)
    ticks.now += 0.5
    assert (await api.authenticate(token)).name == "ann"  # the cached record
    ticks.now += 0.5
    with pytest.raises(Unauthenticated, match="revoked"):
        await api.authenticate(token)


async def test_a_revocation_through_the_same_authenticator_counts_at_once(
    store: SqliteTokenStore,
) -> None:
    api = Authenticator(store, cache_seconds=60.0, monotonic=Ticks())
    token, record = await api.issue("ann", "acme", [OPERATOR], created_by="root")
    await api.authenticate(token)

    await api.revoke(record.token_id)

    with pytest.raises(Unauthenticated, match="revoked"):
        await api.authenticate(token)


async def test_a_cached_record_still_checks_the_secret_and_the_expiry(
    store: SqliteTokenStore,
) -> None:
    now_ms = [1_000_000]
    api = Authenticator(store, clock_ms=lambda: now_ms[0], cache_seconds=60.0, monotonic=Ticks())
    token, _ = await api.issue("ann", "acme", [OPERATOR], created_by="root", expires_in_s=10)
    await api.authenticate(token)

    with pytest.raises(Unauthenticated, match="unknown API token"):
        await api.authenticate(token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb"))
    now_ms[0] += 10_000
    with pytest.raises(Unauthenticated, match="expired"):
        await api.authenticate(token)


class CountingStore:
    """The real store, counting reads and holding each until released."""

    def __init__(self, store: SqliteTokenStore) -> None:
        self.store = store
        self.reads = 0
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def get(self, token_id: str) -> TokenRecord | None:
        self.reads += 1
        self.reading.set()
        await self.release.wait()
        return await self.store.get(token_id)


async def test_requests_that_find_a_token_stale_together_share_one_store_read(
    store: SqliteTokenStore,
) -> None:
    token, _ = await Authenticator(store).issue("ann", "acme", [OPERATOR], created_by="root")
    counting = CountingStore(store)
    api = Authenticator(cast(TokenStore, counting), cache_seconds=1.0, monotonic=Ticks())

    waiting = [asyncio.create_task(api.authenticate(token)) for _ in range(20)]
    # The tasks run in creation order: once the first reads, all twenty have asked.
    await counting.reading.wait()
    counting.release.set()

    assert {p.name for p in await asyncio.gather(*waiting)} == {"ann"}
    assert counting.reads == 1
