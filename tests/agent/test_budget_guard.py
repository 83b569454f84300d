"""The budget guard as a cluster runs it: two agent workers (two guards, two ledgers)
over one PostgreSQL read model fed by the projector's own plans. What each worker sees
of the other's spend, and that no usage event is counted twice or missed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aob.events.types import RUNS_TOPIC, AgentUsageRecorded, Event, RunSubmitted
from aob.projections.readmodels import Position
from aob.projections.readmodels.postgres import PostgresReadModels
from aob.projections.usage.budgets import Budget, Spend
from aob.workers.agent.budget_guard import BudgetGuard, Budgets, BudgetSettings
from tests.fixtures.postgres import PostgresSchemas

TENANT_BUDGET = Budget(max_tokens=1000)
BUDGETS = Budgets(run=Budget(max_tokens=500), tenant=TENANT_BUDGET)
NOW = 1_800_000_000_000  # a fixed clock: the period is the month holding it


@pytest.fixture
async def store(postgres_schemas: PostgresSchemas) -> AsyncIterator[PostgresReadModels]:
    models = await PostgresReadModels.open(postgres_schemas.create())
    submitted = RunSubmitted(
        "r1", {"nodes": [], "budget": {"max_tokens": 500}}, {}, [], tenant="acme"
    )
    await models.apply([(Position(RUNS_TOPIC, 0, 0), Event("s1", "r1", NOW, submitted))])
    yield models
    await models.close()


def guard(store: PostgresReadModels) -> BudgetGuard:
    return BudgetGuard(store, BudgetSettings({"acme": TENANT_BUDGET}), clock=lambda: NOW)


async def test_two_workers_see_each_others_spend_once_projected(store: PostgresReadModels):
    first, second = guard(store), guard(store)
    assert await first.budgets_of("r1", "acme") == BUDGETS
    tab = first.ledger.open("r1", "acme")
    tab.spend = Spend(tokens=450)
    # The first worker counts its own running attempt; the second cannot see it yet.
    assert await first.check(tab, BUDGETS, None, "m", at_limit=True) is None
    other = second.ledger.open("r1", "acme")
    other.spend = Spend(tokens=60)
    crossed = await first.check(tab, BUDGETS, None, "m", at_limit=True)
    assert crossed is None  # the other worker's 60 are in flight elsewhere: the bound
    assert await second.check(other, BUDGETS, None, "m", at_limit=True) is None

    # The first attempt ends: its usage event is appended, not yet projected. Its worker
    # still counts it (from the ledger), once.
    first.ledger.close(tab, "u1", NOW)
    mine = first.ledger.open("r1", "acme")
    assert (await first._spent(run_id="r1")).tokens == 450
    usage = AgentUsageRecorded("r1", "a", 0, 1, "m", 1, 440, 10, 450, tenant="acme")
    await store.apply([(Position(RUNS_TOPIC, 0, 1), Event("u1", "r1", NOW, usage))])
    # Projected: counted from the read model now, by both workers, and still once.
    assert (await first._spent(run_id="r1")).tokens == 450
    assert first.ledger.pending_ids() == []
    assert (await second._spent(run_id="r1")).tokens == 450 + 60
    found = await second.check(other, BUDGETS, None, "m", at_limit=False)
    assert found is not None
    assert found.message == "run budget max_tokens 500 exceeded: spent 510"
    mine.spend = Spend(tokens=50)
    found = await first.check(mine, BUDGETS, None, "m", at_limit=True)
    assert found is not None
    assert found.message == "run budget max_tokens 500 used up: spent 500"


async def test_a_cost_budget_refuses_an_unpriced_model(store: PostgresReadModels):
    budgets = Budgets(run=Budget(max_cost_usd=1.0), tenant=None)
    worker = guard(store)
    found = await worker.check(
        worker.ledger.open("r1", "acme"), budgets, None, "cheap-x", at_limit=True
    )
    assert found is not None
    assert "model 'cheap-x' has no price" in found.message
