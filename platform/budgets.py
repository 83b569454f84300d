"""The operator's prices and budgets (AOB_MODEL_PRICES, AOB_TENANT_BUDGETS, ...) as the
agent workers use them: the composition root's part of docs/budgets.md."""

from __future__ import annotations

from aob.platform.settings import Settings
from aob.projections.usage.budgets import Budget
from aob.projections.usage.pricing import ModelPrice
from aob.workers.agent.budget_guard import BudgetGuard, BudgetSettings, UsageStore


def model_prices(settings: Settings) -> dict[str, ModelPrice]:
    return {
        model: ModelPrice(price.input, price.output, price.cached_input)
        for model, price in settings.model_prices.items()
    }


def budget_settings(settings: Settings) -> BudgetSettings:
    tenants = {
        tenant: Budget(budget.max_cost_usd, budget.max_tokens)
        for tenant, budget in settings.tenant_budgets.items()
    }
    return BudgetSettings(tenants, settings.budget_period, settings.budget_approval_timeout_ms)


def budget_guard(settings: Settings, read_models: UsageStore) -> BudgetGuard:
    """One guard (one ledger) per worker process: its attempts see each other's spend."""
    return BudgetGuard(read_models, budget_settings(settings))
