"""Workflow-aware rate limiting: tiers by agent count, GCRA state in a shared store.

`RateLimiter(store, TierConfig(...)).admit(tenant, definition)` counts one
submission or raises `RateLimited` (the API answers 429 with Retry-After and records
nothing). Stores: `SqliteLimiterStore` (embedded), `PostgresLimiterStore` (cluster:
shared by every API process).
"""

from aob.platform.ratelimit.gcra import Decision, gcra
from aob.platform.ratelimit.limiter import Admitted, RateLimited, RateLimiter
from aob.platform.ratelimit.stores import LimiterStore, PostgresLimiterStore, SqliteLimiterStore
from aob.platform.ratelimit.tiers import (
    HEAVY,
    SIMPLE,
    STANDARD,
    TIERS,
    Rule,
    TierConfig,
    count_agents,
)

__all__ = [
    "HEAVY",
    "SIMPLE",
    "STANDARD",
    "TIERS",
    "Admitted",
    "Decision",
    "LimiterStore",
    "PostgresLimiterStore",
    "RateLimited",
    "RateLimiter",
    "Rule",
    "SqliteLimiterStore",
    "TierConfig",
    "count_agents",
    "gcra",
]
