"""Runs: submit, status, list, cancel, patch, timeline."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, Field

from aob.platform.api.bounds import INT64_MAX
from aob.platform.api.deps import (
    Actor,
    CommandsDep,
    EngineDep,
    PrincipalDep,
    TraceId,
    commands_of,
    request_trace_id,
)
from aob.platform.audit import run_history
from aob.platform.auth.http import principal_of, require
from aob.platform.auth.principal import Permission
from aob.platform.commands import Commands
from aob.platform.problems import Problem, not_found
from aob.platform.ratelimit import RateLimited
from aob.projections.readmodels.queries import decode_cursor
from aob.projections.usage.summary import run_usage
from aob.projections.workflow.materialize import (
    DEFAULT_PATCH_LIMITS,
    PatchReplayError,
    materialize,
)

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])


class SubmitRun(BaseModel):
    """Exactly one of `definition` (inline), `tag` or `workflow_id` (+ `version`)."""

    definition: dict[str, Any] | None = None
    tag: str | None = Field(default=None, max_length=128)
    workflow_id: str | None = Field(default=None, max_length=128)
    version: int | None = Field(default=None, ge=1, le=INT64_MAX)
    inputs: Any = Field(default_factory=dict)


class CancelRun(BaseModel):
    reason: str = Field(default="", max_length=2000)


class PatchRun(BaseModel):
    operations: list[Any] = Field(description="RFC 6902 JSON Patch operations", max_length=1000)
    reason: str = Field(default="", max_length=2000)


@router.post(
    "", status_code=202, summary="Submit a run", dependencies=[require(Permission.OPERATE)]
)
async def submit_run(body: SubmitRun, request: Request) -> JSONResponse:
    # The hot path: what the `CommandsDep`, `Actor`, `TraceId` and `PrincipalDep`
    # dependencies give, read here from the request instead (FastAPI resolving four
    # dependencies cost about a fifth of a submit's HTTP handling; none has parameters,
    # so the OpenAPI document is the same).
    principal = principal_of(request)
    accepted = await commands_of(request).submit_run(
        definition=body.definition,
        tag=body.tag,
        workflow_id=body.workflow_id,
        version=body.version,
        inputs=body.inputs,
        actor=principal.name,
        trace_id=request_trace_id(request),
        tenant=principal.tenant,
    )
    location = f"/api/v1/runs/{accepted['run_id']}"
    return JSONResponse(accepted, status_code=202, headers={"Location": location})


def epoch_ms(value: Any) -> Any:
    """An instant as epoch milliseconds: an integer of ms, or ISO 8601 (a time without
    an offset is UTC). Anything else is left to fail the int check, with this message."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expected epoch milliseconds or an ISO 8601 time "
            f"(e.g. 2026-01-31T12:00:00Z), got {value!r}"
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return round(instant.timestamp() * 1000)


Instant = Annotated[
    int | None,
    BeforeValidator(epoch_ms),
    Query(
        ge=-INT64_MAX,
        le=INT64_MAX,
        description="epoch milliseconds or ISO 8601 (UTC when no offset is given)",
    ),
]


@router.get("", summary="List runs, newest first", dependencies=[require(Permission.READ)])
async def list_runs(
    engine: EngineDep,
    principal: PrincipalDep,
    status: Literal["running", "waiting", "completed", "failed", "cancelled"] | None = None,
    workflow_id: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
    since: Instant = None,
    until: Instant = None,
) -> dict[str, Any]:
    """`since`/`until` keep runs submitted in [since, until)."""
    if cursor is not None:
        _check_cursor(cursor)
    if since is not None and until is not None and since > until:
        raise Problem(
            422,
            "invalid-request",
            "Invalid request",
            f"since ({since}) is after until ({until}): no run can match",
            errors=[{"path": "/query/since", "message": "must not be after until"}],
        )
    items, next_cursor = await engine.read_models.list_runs(
        status=status,
        workflow_id=workflow_id,
        limit=limit,
        before=cursor,
        tenant=principal.tenant,
        since=since,
        until=until,
    )
    return {"items": items, "next_cursor": next_cursor}


async def _charge_tier_change(
    request: Request, tenant: str, current: Any, operations: list[Any]
) -> None:
    """The rate-limit tier follows the run's materialized workflow: a patch that would
    raise the run's tier (say, a zero-agent run patched up to five agents) is charged
    to the higher tier's limiter, as a submission in that tier would be; over it, 429
    with Retry-After and nothing recorded.

    Patches proposed by agents are not charged: the agent cap (5 spawns a run) bounds
    them, and the run was charged at its submission.
    """
    security = getattr(request.app.state, "security", None)
    limiter = getattr(security, "limiter", None)
    if limiter is None or not isinstance(current, dict):
        return
    try:
        patched = materialize(current, [operations], limits=DEFAULT_PATCH_LIMITS)
    except PatchReplayError:
        return  # the patch does not apply: propose_patch refuses it, nothing recorded
    if not limiter.config.raises_tier(current, patched):
        return
    try:
        await limiter.admit(tenant, patched)
    except RateLimited as refused:
        raise Problem(
            429,
            "rate-limited",
            "Too many runs submitted",
            f"this patch moves the run to the {refused.tier} tier: {refused}",
            headers={"Retry-After": str(refused.retry_after_s)},
            tier=refused.tier,
            limit_per_minute=refused.per_minute,
            retry_after=refused.retry_after_s,
        ) from None


def _check_cursor(cursor: str) -> None:
    """400 for a cursor this API did not hand out (the read models would fail on it)."""
    try:
        submitted_at, _ = decode_cursor(cursor)
    except ValueError:
        submitted_at = None
    if submitted_at is None or not -INT64_MAX <= submitted_at <= INT64_MAX:
        raise Problem(
            400,
            "invalid-cursor",
            "Invalid cursor",
            "the cursor is not one this API returned: pass a next_cursor of an earlier page",
        )


@router.get(
    "/{run_id}", summary="Run status with its node states", dependencies=[require(Permission.READ)]
)
async def get_run(run_id: str, commands: CommandsDep) -> dict[str, Any]:
    run = await commands.run(run_id)
    run["usage"] = await _usage(commands, run_id)
    return run


async def _usage(commands: Commands, run_id: str) -> dict[str, Any]:
    """The run's LLM tokens and cost, per node and in total, and its budget."""
    budget = await commands.read.run_budget(run_id)
    rows = await commands.read.run_usage(run_id)
    return run_usage(rows, budget["budget"] if budget else None)


@router.post(
    "/{run_id}/cancel",
    status_code=202,
    summary="Cancel a run",
    dependencies=[require(Permission.OPERATE)],
)
async def cancel_run(
    run_id: str,
    commands: CommandsDep,
    actor: Actor,
    trace_id: TraceId,
    body: CancelRun | None = None,
) -> dict[str, Any]:
    reason = body.reason if body else ""
    return await commands.cancel_run(run_id, reason, actor=actor, trace_id=trace_id)


@router.post(
    "/{run_id}/patch",
    summary="Apply a JSON Patch to a running workflow",
    dependencies=[require(Permission.OPERATE)],
)
async def patch_run(
    run_id: str,
    body: PatchRun,
    commands: CommandsDep,
    actor: Actor,
    trace_id: TraceId,
    principal: PrincipalDep,
    request: Request,
) -> JSONResponse:
    run = await commands.run(run_id)
    await _charge_tier_change(request, principal.tenant, run["definition"], body.operations)
    patch = await commands.propose_patch(
        run_id, body.operations, body.reason, actor=actor, trace_id=trace_id
    )
    status = {"applied": 200, "rejected": 409}.get(patch.get("status", ""), 202)
    return JSONResponse(patch, status_code=status)


@router.get("/{run_id}/patches", summary="A run's patches", dependencies=[require(Permission.READ)])
async def list_patches(run_id: str, commands: CommandsDep, engine: EngineDep) -> dict[str, Any]:
    await commands.run(run_id)
    return {"items": await engine.read_models.list_patches(run_id)}


@router.get(
    "/{run_id}/events",
    summary="A run's full event timeline, in log order",
    dependencies=[require(Permission.READ)],
)
async def run_events(
    run_id: str,
    commands: CommandsDep,
    engine: EngineDep,
    after: Annotated[int | None, Query(ge=0, le=INT64_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    source: Annotated[
        Literal["readmodels", "log"],
        Query(
            description="'log': read for audit straight from the log (every record, "
            "duplicates too; reads the run's partition from offset 0)"
        ),
    ] = "readmodels",
) -> dict[str, Any]:
    if source == "log":
        events = await run_history(engine.log, run_id)
        if not events:
            raise not_found("run", run_id)
        newer = [e for e in events if after is None or e["offset"] > after]
        return {"items": newer[:limit]}
    await commands.run(run_id)
    return {"items": await engine.read_models.timeline(run_id, after_offset=after, limit=limit)}
