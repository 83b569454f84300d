"""Workflow-aware tiers: a submitted workflow's agent count decides its rate limit.

As the seed: no agent node is Simple (100/min), up to 2 Standard (20/min), more
Heavy (5/min). Limits are per tenant and configurable, also per tenant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

SIMPLE: Final = "simple"
STANDARD: Final = "standard"
HEAVY: Final = "heavy"
TIERS: Final = (SIMPLE, STANDARD, HEAVY)
DEFAULT_PER_MINUTE: Final[Mapping[str, int]] = {SIMPLE: 100, STANDARD: 20, HEAVY: 5}


@dataclass(frozen=True, slots=True)
class Rule:
    """At most `per_minute` submissions a minute on average, `burst` at once."""

    per_minute: int
    burst: int

    @property
    def interval_ms(self) -> float:
        """The time one submission uses up: a minute shared among `per_minute`."""
        return 60_000 / self.per_minute


@dataclass(frozen=True, slots=True)
class TierConfig:
    """Limits per tier (submissions a minute), with per-tenant overrides.

    `burst` None lets a tenant spend a whole minute's allowance at once; a limit of
    0 refuses every submission of that tier.
    """

    per_minute: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PER_MINUTE))
    standard_max_agents: int = 2
    tenants: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    burst: int | None = None

    def __post_init__(self) -> None:
        unknown = sorted({*self.per_minute, *(t for o in self.tenants.values() for t in o)})
        unknown = [name for name in unknown if name not in TIERS]
        if unknown:
            raise ValueError(f"unknown rate-limit tiers {unknown}; the tiers are {list(TIERS)}")
        values = [
            *self.per_minute.values(),
            *(v for o in self.tenants.values() for v in o.values()),
        ]
        if any(v < 0 for v in values) or self.standard_max_agents < 1:
            raise ValueError("rate limits must be >= 0 and standard_max_agents >= 1")

    def tier_of(self, definition: Any) -> str:
        """The tier of a workflow definition, by its number of agent nodes."""
        agents = count_agents(definition)
        if agents == 0:
            return SIMPLE
        return STANDARD if agents <= self.standard_max_agents else HEAVY

    def raises_tier(self, before: Any, after: Any) -> bool:
        """Whether definition `after` (a run's workflow once patched) is in a higher
        tier than `before` (as it runs now)."""
        return TIERS.index(self.tier_of(after)) > TIERS.index(self.tier_of(before))

    def rule(self, tenant: str, tier: str) -> Rule | None:
        """The tenant's rule for `tier`; None when that tier is refused outright."""
        per_minute = self.tenants.get(tenant, {}).get(tier)
        if per_minute is None:
            per_minute = self.per_minute.get(tier, DEFAULT_PER_MINUTE[tier])
        if per_minute <= 0:
            return None
        burst = per_minute if self.burst is None else max(1, min(self.burst, per_minute))
        return Rule(per_minute, burst)


def count_agents(definition: Any) -> int:
    """How many nodes of type `agent` a definition has (0 for anything malformed:
    validation reports that, not the limiter)."""
    nodes = definition.get("nodes") if isinstance(definition, Mapping) else None
    if not isinstance(nodes, list):
        return 0
    return sum(1 for node in nodes if isinstance(node, Mapping) and node.get("type") == "agent")
