"""Patch review: show a run's patch with its diff, approve or reject one awaiting review.

A workflow with `patch_policy: review` holds its agents' valid patches as proposed,
with review "pending". A reviewer's decision is a `PatchReviewed` event; the
coordinator then applies an approved patch (if it still applies to the run as it is)
or rejects it, and the run goes on.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from aob.platform.api.deps import Actor, CommandsDep, TraceId
from aob.platform.auth.http import require
from aob.platform.auth.principal import Permission

router = APIRouter(prefix="/api/v1/runs", tags=["patches"])


class Review(BaseModel):
    reason: str = Field(default="", max_length=2000, description="why, for the run's history")


@router.get(
    "/{run_id}/patches/{patch_id}",
    summary="A patch, with its diff if undecided",
    dependencies=[require(Permission.READ)],
)
async def get_patch(run_id: str, patch_id: str, commands: CommandsDep) -> dict[str, Any]:
    """The patch; while it is undecided, `diff` shows what it would change in the run's
    current (materialized) workflow: nodes and edges added, removed or changed."""
    return await commands.patch_with_diff(run_id, patch_id)


@router.post(
    "/{run_id}/patches/{patch_id}/approve",
    summary="Approve a patch awaiting review",
    dependencies=[require(Permission.APPROVE)],
)
async def approve_patch(
    run_id: str,
    patch_id: str,
    commands: CommandsDep,
    actor: Actor,
    trace_id: TraceId,
    body: Review | None = None,
) -> JSONResponse:
    patch = await commands.review_patch(
        run_id, patch_id, "approve", body.reason if body else "", actor=actor, trace_id=trace_id
    )
    return _reviewed(patch)


@router.post(
    "/{run_id}/patches/{patch_id}/reject",
    summary="Reject a patch awaiting review",
    dependencies=[require(Permission.APPROVE)],
)
async def reject_patch(
    run_id: str,
    patch_id: str,
    commands: CommandsDep,
    actor: Actor,
    trace_id: TraceId,
    body: Review | None = None,
) -> JSONResponse:
    patch = await commands.review_patch(
        run_id, patch_id, "reject", body.reason if body else "", actor=actor, trace_id=trace_id
    )
    return _reviewed(patch)


def _reviewed(patch: dict[str, Any]) -> JSONResponse:
    """200 once the coordinator decided the reviewed patch, 202 while it has not."""
    return JSONResponse(patch, status_code=200 if patch["status"] != "proposed" else 202)
