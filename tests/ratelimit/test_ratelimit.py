"""Rate limiting: tiers by agent count, GCRA arithmetic, and the shared stores
(SQLite and a real PostgreSQL) under concurrent admissions from separate clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aob.platform.ratelimit import (
    HEAVY,
    SIMPLE,
    STANDARD,
    LimiterStore,
    PostgresLimiterStore,
    RateLimited,
    RateLimiter,
    Rule,
    SqliteLimiterStore,
    TierConfig,
    count_agents,
    gcra,
)


def workflow(agents: int, others: int = 1) -> dict[str, Any]:
    nodes = [{"id": f"a{i}", "type": "agent"} for i in range(agents)]
    nodes += [{"id": f"t{i}", "type": "transform"} for i in range(others)]
    return {"name": "w", "nodes": nodes}


@pytest.mark.parametrize(
    ("agents", "tier"), [(0, SIMPLE), (1, STANDARD), (2, STANDARD), (3, HEAVY), (9, HEAVY)]
)
def test_the_agent_count_places_a_workflow_in_its_tier(agents: int, tier: str) -> None:
    assert TierConfig().tier_of(workflow(agents)) == tier


def test_tiers_and_limits_are_configurable_per_tenant() -> None:
    config = TierConfig(
        per_minute={SIMPLE: 50}, standard_max_agents=4, tenants={"big": {HEAVY: 60}}
    )
    assert config.tier_of(workflow(4)) == STANDARD
    assert config.tier_of(workflow(5)) == HEAVY
    assert config.rule("any", SIMPLE) == Rule(50, 50)
    assert config.rule("any", STANDARD) == Rule(20, 20)  # the seed's default stays
    assert config.rule("any", HEAVY) == Rule(5, 5)
    assert config.rule("big", HEAVY) == Rule(60, 60)
    assert TierConfig(burst=3).rule("x", SIMPLE) == Rule(100, 3)
    assert TierConfig(per_minute={HEAVY: 0}).rule("x", HEAVY) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_minute": {"huge": 1}},
        {"tenants": {"t": {"giant": 3}}},
        {"per_minute": {SIMPLE: -1}},
        {"standard_max_agents": 0},
    ],
)
def test_bad_tier_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"tier|must be"):
        TierConfig(**kwargs)


@pytest.mark.parametrize(
    "definition", [None, "text", {"nodes": "x"}, {"nodes": [1, {"type": "agent"}, {}]}]
)
def test_malformed_definitions_count_what_they_plainly_have(definition: Any) -> None:
    expected = 1 if isinstance(definition, dict) and isinstance(definition["nodes"], list) else 0
    assert count_agents(definition) == expected


def test_gcra_admits_a_burst_then_one_per_interval() -> None:
    rule = Rule(per_minute=5, burst=5)  # one per 12 s
    tat = None
    for expected_remaining in (4, 3, 2, 1, 0):
        decision = gcra(tat, 0, rule)
        assert decision.allowed
        assert decision.remaining == expected_remaining
        tat = decision.tat_ms
    refused = gcra(tat, 0, rule)
    assert not refused.allowed
    assert refused.retry_after_ms == 12_000
    assert refused.tat_ms == tat  # a refusal spends nothing
    assert not gcra(tat, 11_999, rule).allowed
    assert gcra(tat, 12_000, rule).allowed


@given(st.lists(st.integers(min_value=0, max_value=300_000), min_size=1, max_size=200))
def test_gcra_never_admits_more_than_burst_plus_rate(arrivals: list[int]) -> None:
    rule = Rule(per_minute=7, burst=3)
    tat = None
    admitted_at: list[int] = []
    for now in sorted(arrivals):
        decision = gcra(tat, now, rule)
        if decision.allowed:
            admitted_at.append(now)
        tat = decision.tat_ms
    for i, start in enumerate(admitted_at):
        within = [t for t in admitted_at[i:] if t - start < 60_000]
        assert len(within) <= rule.burst + rule.per_minute


StoreFactory = Callable[[], Awaitable[LimiterStore]]


@pytest.fixture(params=["sqlite", "postgres"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores on one shared place (a file, a schema), each its own client, as
    separate API processes would."""
    opened: list[LimiterStore] = []
    if request.param == "sqlite":
        path = tmp_path / "platform.db"

        async def factory() -> LimiterStore:
            opened.append(await SqliteLimiterStore.open(path))
            return opened[-1]
    else:
        dsn = request.getfixturevalue("postgres_schema")

        async def factory() -> LimiterStore:
            opened.append(await PostgresLimiterStore.open(dsn))
            return opened[-1]

    yield factory
    for store in opened:
        await store.close()


async def test_store_counts_per_tenant_and_tier(open_store: StoreFactory) -> None:
    limiter = RateLimiter(await open_store(), TierConfig(per_minute={HEAVY: 2}))
    heavy = workflow(3)
    for _ in range(2):
        await limiter.admit("acme", heavy, now_ms=1_000)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit("acme", heavy, now_ms=1_000)
    assert (refused.value.tier, refused.value.per_minute) == (HEAVY, 2)
    assert refused.value.retry_after_s == 30
    admitted = await limiter.admit("acme", workflow(0), now_ms=1_000)  # another tier
    assert (admitted.tier, admitted.remaining) == (SIMPLE, 99)
    await limiter.admit("other", heavy, now_ms=1_000)  # another tenant
    assert (await limiter.admit("acme", heavy, now_ms=31_000)).tier == HEAVY


async def test_a_tier_limited_to_zero_refuses_without_touching_the_store(
    open_store: StoreFactory,
) -> None:
    limiter = RateLimiter(await open_store(), TierConfig(per_minute={HEAVY: 0}))
    with pytest.raises(RateLimited, match="heavy limit of 0"):
        await limiter.admit("acme", workflow(5))


async def test_concurrent_admissions_from_several_clients_never_overspend(
    open_store: StoreFactory,
) -> None:
    """Four clients (as four API processes) race 60 submissions for a limit of 10:
    exactly 10 pass, whoever sent them."""
    config = TierConfig(per_minute={STANDARD: 10})
    limiters = [RateLimiter(await open_store(), config) for _ in range(4)]

    async def submit(limiter: RateLimiter) -> bool:
        try:
            await limiter.admit("acme", workflow(1))
        except RateLimited:
            return False
        return True

    outcomes = await asyncio.gather(*(submit(limiters[i % 4]) for i in range(60)))
    assert sum(outcomes) == 10
