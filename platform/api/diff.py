"""GET /api/v1/runs/{a}/diff/{b}: two runs side by side (`aob.platform.compare`).

Tenant-scoped like every run route: the tenant guard answers 404 for another tenant's
run `a`, and this route answers the same 404 for another tenant's run `b`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from aob.platform.api.deps import CommandsDep, EngineDep, PrincipalDep
from aob.platform.auth.http import require
from aob.platform.auth.principal import DEFAULT_TENANT, Permission
from aob.platform.compare import compare_runs
from aob.platform.problems import not_found

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])


@router.get(
    "/{run_a}/diff/{run_b}",
    summary="Compare two runs: definition, inputs, node statuses and outputs",
    dependencies=[require(Permission.READ)],
)
async def diff_runs(
    run_a: str,
    run_b: str,
    commands: CommandsDep,
    engine: EngineDep,
    principal: PrincipalDep,
) -> dict[str, Any]:
    """Diffs are unified diffs (the definition's of its YAML, the others' of JSON);
    `definition.patch` is the JSON Patch from A's definition to B's. Values past
    20,000 characters are cut, with a marker (`truncated` says so)."""
    a = await commands.run(run_a)
    b = await commands.run(run_b)
    if (b.get("tenant") or DEFAULT_TENANT) != principal.tenant:
        raise not_found("run", run_b)
    forks = (await _fork_of(engine, run_a), await _fork_of(engine, run_b))
    return compare_runs(a, b, forks=forks)


async def _fork_of(engine: Any, run_id: str) -> Any:
    """The run's checkpoint (parent, fork point, edits) from its RunSubmitted."""
    first = await engine.read_models.timeline(run_id, limit=1)
    if not first or first[0].get("type") != "RunSubmitted":
        return None
    return (first[0].get("data") or {}).get("checkpoint")
