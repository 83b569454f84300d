"""GCRA (generic cell rate algorithm): a rate limit whose whole state is one number.

The state is the theoretical arrival time (TAT): when the allowance would be fully
spent at the nominal rate. A request at `now` is admitted if, once it is counted
(TAT advanced by one interval), the TAT is at most `burst` intervals ahead of now.
One number per (tenant, tier) makes the shared state a single row, updated under a
row lock; the arithmetic is the same in every store, and pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aob.platform.ratelimit.tiers import Rule


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # The state to store: advanced when allowed, unchanged when refused.
    tat_ms: float
    # When refused, how long until the same request would be admitted.
    retry_after_ms: int
    # Requests that could be admitted right after this one.
    remaining: int


def gcra(tat_ms: float | None, now_ms: float, rule: Rule) -> Decision:
    """Admit one request at `now_ms` given the stored TAT (None: never used)."""
    interval = rule.interval_ms
    window = rule.burst * interval
    start = now_ms if tat_ms is None else max(tat_ms, now_ms)
    new_tat = start + interval
    ahead = new_tat - now_ms
    if ahead > window + 1e-6:  # float slack: the burst-th request must pass
        retry = max(1, math.ceil(ahead - window))
        return Decision(False, start, retry, 0)
    remaining = int((window - ahead + 1e-6) // interval)
    return Decision(True, new_tat, 0, remaining)
