"""The rate limiter the API asks before it records a submission."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aob.platform.ratelimit.stores import LimiterStore
from aob.platform.ratelimit.tiers import TierConfig


class RateLimited(Exception):
    """A submission over its tenant's limit: answer 429 with Retry-After."""

    def __init__(self, tenant: str, tier: str, per_minute: int, retry_after_s: int) -> None:
        super().__init__(
            f"tenant {tenant!r} is over its {tier} limit of {per_minute} runs/min; "
            f"retry after {retry_after_s} s"
        )
        self.tenant = tenant
        self.tier = tier
        self.per_minute = per_minute
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Admitted:
    tier: str
    per_minute: int
    remaining: int


class RateLimiter:
    """Places a workflow in its tier and spends one of the tenant's admissions there."""

    def __init__(self, store: LimiterStore, config: TierConfig | None = None) -> None:
        self.store = store
        self.config = config or TierConfig()

    async def admit(self, tenant: str, definition: Any, now_ms: float | None = None) -> Admitted:
        """Count a submission of `definition`; raises RateLimited if over the limit."""
        tier = self.config.tier_of(definition)
        rule = self.config.rule(tenant, tier)
        if rule is None:
            raise RateLimited(tenant, tier, 0, 60)
        decision = await self.store.admit(tenant, tier, rule, now_ms)
        if not decision.allowed:
            retry_after = max(1, math.ceil(decision.retry_after_ms / 1000))
            raise RateLimited(tenant, tier, rule.per_minute, retry_after)
        return Admitted(tier, rule.per_minute, decision.remaining)

    async def close(self) -> None:
        await self.store.close()
