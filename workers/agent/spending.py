"""One agent attempt's spend: its cost at the operator's prices, and its budgets
enforced around every LLM call (see `budget_guard` for what is guaranteed).

A run budget the workflow lets continue (`on_exceeded: approval` on the budget, or
`on_budget_exceeded: approval` on the agent node) asks a person instead of failing:
the attempt appends `ApprovalRequested` ("budget exceeded, continue?") and waits for
its `ApprovalDecided` in the run's partition of the log. Approved, the run budget no
longer stops this attempt (other nodes stay bound); anything else fails the node.
The wait does not count against the node's max_wall_ms. A tenant's budget is the
operator's: exceeding it always fails the node, no approval can lift it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from aob.events.codec import encode
from aob.events.ids import new_event_id
from aob.events.log.port import Append, EventLog
from aob.events.types import RUNS_TOPIC, ApprovalDecided, ApprovalRequested, Event, NodeScheduled
from aob.projections.usage.budgets import Breach, Spend
from aob.projections.usage.pricing import ModelPrice
from aob.workers.agent.budget_guard import BudgetGuard, Budgets, Tab, now_ms
from aob.workers.agent.llm import Usage
from aob.workers.agent.run_events import agent_event
from aob.workers.agent.tools import AgentFailure
from aob.workers.agent.watch import RunFinished, run_position, wait_for_run_event

_APPROVING = frozenset({"approve", "approved"})
# Beyond the approval's deadline (when the coordinator decides it as timed out), how
# long the attempt still waits for that decision to reach the log.
_DECISION_GRACE_S = 60.0

# The attempt's wall-time clock stands still inside the `with` (a wait of at most the
# seconds given): a person's decision is not the agent's time.
PauseClock = Callable[[float], AbstractContextManager[None]]


def cost_nano(usage: Usage, price: ModelPrice | None) -> int | None:
    """The cost of `usage` at `price`, in nano-USD; None without a price."""
    if price is None:
        return None
    return price.cost_nano(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)


def spend_of(usage: Usage, price: ModelPrice | None) -> Spend:
    cost = cost_nano(usage, price)
    unpriced = usage.total_tokens if cost is None else 0
    return Spend(usage.total_tokens, cost or 0, unpriced)


@dataclass
class AttemptBudget:
    """The budgets of one attempt and what it has spent, as its worker's ledger sees."""

    guard: BudgetGuard
    budgets: Budgets
    tab: Tab
    price: ModelPrice | None
    model: str
    on_exceeded: str  # "fail" or "approval" (run budgets only)
    run_lifted: bool = False  # a person let this attempt go past the run budget

    def spent(self, usage: Usage) -> None:
        """The attempt's spend after a call, for every check from now on."""
        self.tab.spend = spend_of(usage, self.price)

    def close(self, usage_event_id: str | None) -> None:
        self.guard.ledger.close(self.tab, usage_event_id, now_ms())

    async def enforce(
        self, log: EventLog, task: NodeScheduled, pause: PauseClock, *, before_call: bool
    ) -> None:
        """Raises AgentFailure when a budget stops the attempt (before a call: at or
        past a limit; after: past it), unless a person lets it continue."""
        found = await self._check(before_call)
        if found is None:
            return
        if found.scope == "run" and found.text is None and self.on_exceeded == "approval":
            await self._ask_to_continue(log, task, found, pause)
            self.run_lifted = True
            found = await self._check(before_call)  # the tenant's budget still holds
            if found is None:
                return
        raise AgentFailure(found.message)

    async def _check(self, before_call: bool) -> Breach | None:
        return await self.guard.check(
            self.tab,
            self.budgets,
            self.price,
            self.model,
            at_limit=before_call,
            run_lifted=self.run_lifted,
        )

    async def _ask_to_continue(
        self, log: EventLog, task: NodeScheduled, found: Breach, pause: PauseClock
    ) -> None:
        timeout_ms = self.guard.settings.approval_timeout_ms
        approval_id = new_event_id()
        partition, offset = await run_position(log, task.run_id)
        request = ApprovalRequested(
            task.run_id,
            approval_id,
            task.node_id,
            task.iteration,
            f"budget exceeded, continue? {found.message}",
            payload=_figures(found),
            approvers=[],
            deadline=now_ms() + timeout_ms,
        )
        event = agent_event(task, request)
        await log.append([Append(RUNS_TOPIC, task.run_id, encode(event))])

        def decision(event: Event) -> ApprovalDecided | None:
            payload = event.payload
            if isinstance(payload, ApprovalDecided) and payload.approval_id == approval_id:
                return payload
            return None

        wait_s = timeout_ms / 1000 + _DECISION_GRACE_S
        try:
            with pause(wait_s):
                decided = await wait_for_run_event(
                    log, task.run_id, partition, offset, decision, wait_s
                )
        except TimeoutError:
            raise AgentFailure(
                f"{found.message}; nobody decided whether to continue within {timeout_ms} ms"
            ) from None
        except RunFinished as finished:
            raise AgentFailure(f"{found.message}; {finished}") from None
        if decided.decision.lower() not in _APPROVING:
            raise AgentFailure(
                f"{found.message}; continuing was refused ({decided.decision} by "
                f"{decided.decided_by})"
            )


def _figures(found: Breach) -> dict[str, Any]:
    return {
        "kind": "budget",
        "budget": found.scope,
        "limit": found.limit,
        "allowed": found.allowed,
        "spent": found.spent,
    }
