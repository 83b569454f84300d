"""Budgets as the agent runner enforces them, before and after every LLM call.

What a run or a tenant has spent is derived from the durable log: the read models'
`llm_usage` rows (one per `AgentUsageRecorded`), plus what this process knows that
the read models may not have yet (`SpendLedger`): the spend of its attempts still
running and of usage events it appended that the projector has not applied. A
usage event is counted from exactly one side: the read-model sum leaves out the
events the ledger still holds, and the ledger forgets an event once the read model
has it.

What is guaranteed (docs/budgets.md):

- No LLM call starts once the spend this worker sees is at or past a limit; a call
  that takes the spend past a limit ends its node when it returns.
- Within one worker process (the embedded server is one), concurrent attempts see
  each other's spend as of their last finished call: a budget is overshot by at most
  the calls in flight when it was reached (one per running attempt of the run, or of
  the tenant's runs).
- Across worker processes (a cluster), another worker's attempt is seen once its
  `AgentUsageRecorded` is appended (when the attempt ends) and projected: the
  overshoot is also bounded by the spend of attempts running elsewhere meanwhile,
  each at most its node's max_tokens, plus the projector's lag.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aob.projections.usage.budgets import (
    Breach,
    Budget,
    BudgetError,
    Period,
    Spend,
    breach,
    parse_budget,
    period_label,
    period_start,
    tenant_budget,
)
from aob.projections.usage.pricing import ModelPrice, format_usd, nano_usd

_RUN_POLLS = 100  # x 50 ms: how long to wait for a run the projector has not applied yet


class UsageStore(Protocol):
    """What the guard reads of the read models (`AsyncReadModels` is one)."""

    async def spend(
        self,
        run_id: str | None = None,
        tenant: str | None = None,
        since: int | None = None,
        excluding: Sequence[str] = (),
    ) -> dict[str, Any]: ...

    async def usage_recorded(self, event_ids: Sequence[str]) -> set[str]: ...

    async def run_budget(self, run_id: str) -> dict[str, Any] | None: ...


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False)
class Tab:
    """One attempt's spend so far, as this process counts it."""

    run_id: str
    tenant: str
    spend: Spend = field(default_factory=Spend)


@dataclass(frozen=True, slots=True)
class _Recorded:
    run_id: str
    tenant: str
    spend: Spend
    at: int


class SpendLedger:
    """Spend this process knows of that the read models may not have yet."""

    def __init__(self) -> None:
        self._open: set[Tab] = set()
        self._recorded: dict[str, _Recorded] = {}

    def open(self, run_id: str, tenant: str) -> Tab:
        tab = Tab(run_id, tenant)
        self._open.add(tab)
        return tab

    def close(self, tab: Tab, event_id: str | None, at: int) -> None:
        """The attempt ended; its usage event (None: none was appended) is counted
        here until the read models have it."""
        self._open.discard(tab)
        if event_id is not None:
            self._recorded[event_id] = _Recorded(tab.run_id, tab.tenant, tab.spend, at)

    def local(
        self, *, run_id: str | None = None, tenant: str | None = None, since: int = 0
    ) -> tuple[Spend, list[str]]:
        """Spend of the run's (or the tenant's since `since`) attempts running here and
        of their unprojected usage events, and those events' ids."""
        total = Spend()
        for tab in self._open:
            if _matches(tab.run_id, tab.tenant, run_id, tenant):
                total += tab.spend
        ids = []
        for event_id, entry in self._recorded.items():
            if _matches(entry.run_id, entry.tenant, run_id, tenant) and entry.at >= since:
                total += entry.spend
                ids.append(event_id)
        return total, ids

    def pending_ids(self) -> list[str]:
        return list(self._recorded)

    def forget(self, event_ids: set[str]) -> None:
        for event_id in event_ids:
            self._recorded.pop(event_id, None)


def _matches(run: str, tenant: str, want_run: str | None, want_tenant: str | None) -> bool:
    return (want_run is None or run == want_run) and (want_tenant is None or tenant == want_tenant)


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """The operator's budgets (AOB_TENANT_BUDGETS, AOB_BUDGET_PERIOD, ...)."""

    tenants: Mapping[str, Budget] = field(default_factory=dict)
    period: Period = "month"
    approval_timeout_ms: int = 3_600_000


@dataclass(frozen=True, slots=True)
class Budgets:
    """The budgets one attempt counts against."""

    run: Budget | None
    tenant: Budget | None

    @property
    def any(self) -> bool:
        return any(b is not None and not b.is_unlimited for b in (self.run, self.tenant))


class BudgetGuard:
    """Decides whether an attempt may call its LLM (again)."""

    def __init__(
        self,
        store: UsageStore,
        settings: BudgetSettings,
        *,
        ledger: SpendLedger | None = None,
        clock: Callable[[], int] = now_ms,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.settings = settings
        self.ledger = ledger or SpendLedger()
        self.clock = clock
        self.sleep = sleep

    async def budgets_of(self, run_id: str, tenant: str) -> Budgets:
        """The run's budget (as submitted) and its tenant's. Raises BudgetError for a
        run the read models do not know after a wait, or a malformed budget."""
        row = await self.store.run_budget(run_id)
        for _ in range(_RUN_POLLS):
            if row is not None:
                break
            await self.sleep(0.05)  # the task can be here before the projector has the run
            row = await self.store.run_budget(run_id)
        if row is None:
            raise BudgetError(f"run {run_id} is not in the read models yet: its budget is unknown")
        run = parse_budget(row.get("budget"), "budget")
        return Budgets(run, tenant_budget(self.settings.tenants, tenant))

    async def check(
        self,
        tab: Tab,
        budgets: Budgets,
        price: ModelPrice | None,
        model: str,
        *,
        at_limit: bool,
        run_lifted: bool = False,
    ) -> Breach | None:
        """The first budget the spend is past (`at_limit`: at or past, before a call)."""
        run = None if run_lifted else budgets.run
        tenant = budgets.tenant
        unpriced = _unpriced(run, tenant, price, model, self._tenant_scope(tab))
        if unpriced is not None:
            return unpriced
        if run is not None and not run.is_unlimited:
            spent = await self._spent(run_id=tab.run_id)
            found = breach("run", run, spent, at_limit=at_limit)
            if found is not None:
                return found
        if tenant is not None and not tenant.is_unlimited:
            since = period_start(self.clock(), self.settings.period)
            spent = await self._spent(tenant=tab.tenant, since=since)
            return breach(self._tenant_scope(tab, since), tenant, spent, at_limit=at_limit)
        return None

    def _tenant_scope(self, tab: Tab, since: int | None = None) -> str:
        start = period_start(self.clock(), self.settings.period) if since is None else since
        return f"tenant {tab.tenant} ({period_label(start, self.settings.period)})"

    async def _spent(
        self, *, run_id: str | None = None, tenant: str | None = None, since: int = 0
    ) -> Spend:
        local, ids = self.ledger.local(run_id=run_id, tenant=tenant, since=since)
        row = await self.store.spend(run_id, tenant, since or None, ids)
        await self._forget_projected()
        stored = Spend(int(row["tokens"]), int(row["cost_nano"]), int(row["unpriced_tokens"]))
        return stored + local

    async def _forget_projected(self) -> None:
        """Usage events the read models have now count from there (the next sums)."""
        pending = self.ledger.pending_ids()
        if pending:
            self.ledger.forget(await self.store.usage_recorded(pending))


def _unpriced(
    run: Budget | None,
    tenant: Budget | None,
    price: ModelPrice | None,
    model: str,
    tenant_scope: str,
) -> Breach | None:
    """A cost budget cannot bound a model without a price: refused (failing closed)."""
    if price is not None:
        return None
    for scope, budget in (("run", run), (tenant_scope, tenant)):
        if budget is not None and budget.max_cost_usd is not None:
            allowed = format_usd(nano_usd(budget.max_cost_usd))
            return Breach(
                scope,
                "max_cost_usd",
                allowed,
                "unknown",
                False,
                text=(
                    f"{scope} budget max_cost_usd {allowed} cannot be enforced: model "
                    f"{model!r} has no price (the operator sets prices in AOB_MODEL_PRICES)"
                ),
            )
    return None
