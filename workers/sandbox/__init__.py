"""A bounded sandbox for tenant jq programs (child processes with CPU, memory and
output budgets) and a linear-time engine for tenant regexes (`.regex`).

The names below load on first access: the sandbox child (`python -m
aob.workers.sandbox.child`) imports this package too, and must start in tens of
milliseconds, without asyncio or pydantic (a child killed by a budget is replaced).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aob.workers.sandbox.pool import (
        JqBudgetExceeded,
        JqSandbox,
        JqSandboxBusy,
        close_shared_sandbox,
        jq_all,
        jq_first,
        jq_truthy,
        shared_sandbox,
    )
    from aob.workers.sandbox.settings import SandboxSettings

_HOMES = {
    "JqBudgetExceeded": "pool",
    "JqSandbox": "pool",
    "JqSandboxBusy": "pool",
    "close_shared_sandbox": "pool",
    "jq_all": "pool",
    "jq_first": "pool",
    "jq_truthy": "pool",
    "shared_sandbox": "pool",
    "SandboxSettings": "settings",
}

__all__ = [
    "JqBudgetExceeded",
    "JqSandbox",
    "JqSandboxBusy",
    "SandboxSettings",
    "close_shared_sandbox",
    "jq_all",
    "jq_first",
    "jq_truthy",
    "shared_sandbox",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
