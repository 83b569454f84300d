"""A bounded sandbox for tenant jq programs (child processes with CPU, memory and
output budgets) and a linear-time engine for tenant regexes."""

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
