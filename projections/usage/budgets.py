"""Budgets on LLM spend: per run (the workflow's `budget`) and per tenant per period
(the operator's AOB_TENANT_BUDGETS), and the verdicts the agent runner acts on.

A budget limits tokens (`max_tokens`, prompt plus completion) and/or cost
(`max_cost_usd`). The runner asks twice around every LLM call:

- before it: a spend at or past a limit refuses the call (`room_left` is False);
- after it: a spend past a limit ends the node (`exceeded`).

A cost limit cannot be enforced on tokens without a price: once a cost budget
applies, a model missing from the price table is refused before its first call
(failing closed, so an unpriced model is no way around a budget).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aob.projections.usage.pricing import format_usd, nano_usd

Period = Literal["day", "week", "month"]
OnExceeded = Literal["fail", "approval"]
ON_EXCEEDED: tuple[OnExceeded, ...] = ("fail", "approval")
ALL_TENANTS = "*"


class BudgetError(ValueError):
    """A budget that cannot be read (bad type, negative limit)."""


@dataclass(frozen=True, slots=True)
class Spend:
    """Tokens and cost spent. `unpriced_tokens` are tokens of models without a price:
    they count against token limits, their cost is unknown (not in `cost_nano`)."""

    tokens: int = 0
    cost_nano: int = 0
    unpriced_tokens: int = 0

    def __add__(self, other: Spend) -> Spend:
        return Spend(
            self.tokens + other.tokens,
            self.cost_nano + other.cost_nano,
            self.unpriced_tokens + other.unpriced_tokens,
        )


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits on a run's or a tenant's spend; None: that dimension is unlimited."""

    max_cost_usd: float | None = None
    max_tokens: int | None = None
    on_exceeded: OnExceeded = "fail"

    @property
    def limits_cost(self) -> bool:
        return self.max_cost_usd is not None

    @property
    def is_unlimited(self) -> bool:
        return self.max_cost_usd is None and self.max_tokens is None


@dataclass(frozen=True, slots=True)
class Breach:
    """A budget at or past one of its limits: which, and the figures."""

    scope: str  # "run" or "tenant acme (month from 2026-12-01)"
    limit: str  # "max_cost_usd" or "max_tokens"
    allowed: str
    spent: str
    crossed: bool  # past the limit (False: exactly at it)
    text: str | None = None  # a message other than the figures (an unpriced model)

    @property
    def message(self) -> str:
        if self.text is not None:
            return self.text
        verb = "exceeded" if self.crossed else "used up"
        return f"{self.scope} budget {self.limit} {self.allowed} {verb}: spent {self.spent}"


def breach(scope: str, budget: Budget, spend: Spend, *, at_limit: bool) -> Breach | None:
    """The first limit `spend` is past (or, with `at_limit`, at or past), else None."""
    if budget.max_tokens is not None:
        over = spend.tokens > budget.max_tokens
        if over or (at_limit and spend.tokens >= budget.max_tokens):
            return Breach(scope, "max_tokens", str(budget.max_tokens), str(spend.tokens), over)
    if budget.max_cost_usd is not None:
        limit = nano_usd(budget.max_cost_usd)
        over = spend.cost_nano > limit
        if over or (at_limit and spend.cost_nano >= limit):
            allowed, spent = format_usd(limit), format_usd(spend.cost_nano)
            return Breach(scope, "max_cost_usd", allowed, spent, over)
    return None


def parse_budget(value: Any, where: str = "budget") -> Budget | None:
    """A `budget` object ({max_cost_usd, max_tokens, on_exceeded}); None when absent.
    Raises BudgetError for a malformed one (the workflow schema refuses those first)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise BudgetError(f"{where} must be an object")
    unknown = set(value) - {"max_cost_usd", "max_tokens", "on_exceeded"}
    if unknown:
        raise BudgetError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    cost, tokens = value.get("max_cost_usd"), value.get("max_tokens")
    on_exceeded = value.get("on_exceeded", "fail")
    if cost is not None and (
        isinstance(cost, bool) or not isinstance(cost, int | float) or cost < 0
    ):
        raise BudgetError(f"{where}.max_cost_usd must be a number >= 0")
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0
    ):
        raise BudgetError(f"{where}.max_tokens must be an integer >= 0")
    if on_exceeded not in ON_EXCEEDED:
        raise BudgetError(f"{where}.on_exceeded must be one of {', '.join(ON_EXCEEDED)}")
    return Budget(None if cost is None else float(cost), tokens, on_exceeded)


def tenant_budget(budgets: Mapping[str, Budget], tenant: str) -> Budget | None:
    """The tenant's own budget, else the one for every tenant ("*"), else None."""
    return budgets.get(tenant) or budgets.get(ALL_TENANTS)


def period_start(now_ms: int, period: Period) -> int:
    """Epoch ms when the budget period holding `now_ms` began (calendar periods, UTC:
    a month from the 1st 00:00, a week from Monday 00:00, a day from 00:00)."""
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        start = day.replace(day=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())
    else:
        start = day
    return int(start.timestamp() * 1000)


def period_label(start_ms: int, period: Period) -> str:
    start = datetime.fromtimestamp(start_ms / 1000, tz=UTC)
    return f"{period} from {start:%Y-%m-%d}"
