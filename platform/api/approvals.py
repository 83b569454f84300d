"""Approvals: decide, list (the inbox, all or per run), show one with its context."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from aob.platform.api.deps import Actor, EngineDep, PrincipalDep, TraceId
from aob.platform.approvals import Approvals
from aob.platform.auth.http import require
from aob.platform.auth.principal import Permission

router = APIRouter(prefix="/api/v1/approvals", tags=["approvals"])


async def get_approvals(engine: EngineDep) -> Approvals:
    return Approvals(engine)


async def get_roles(principal: PrincipalDep) -> list[str]:
    """The authenticated caller's roles (approvals may name them: "role:finance")."""
    return sorted(principal.roles)


ApprovalsDep = Annotated[Approvals, Depends(get_approvals)]
Roles = Annotated[list[str], Depends(get_roles)]


class Decide(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    comments: str = Field(default="", max_length=4000)


@router.post(
    "/{approval_id}/decide",
    summary="Approve or reject",
    responses={
        403: {
            "description": "The caller is not one of the approvers, or submitted the run "
            "and the node does not allow self-approval"
        },
        404: {"description": "No such approval"},
        409: {
            "description": "Already decided (the first decision is in the body), or the run is over"
        },
    },
    dependencies=[require(Permission.APPROVE)],
)
async def decide(
    approval_id: str,
    body: Decide,
    approvals: ApprovalsDep,
    actor: Actor,
    roles: Roles,
    trace_id: TraceId,
    principal: PrincipalDep,
) -> dict[str, Any]:
    """A decision, or with a quorum a vote (the answer then shows the votes so far)."""
    return await approvals.decide(
        approval_id,
        body.decision,
        body.comments,
        actor=actor,
        roles=roles,
        trace_id=trace_id,
        authenticated=principal.via != "none",
    )


@router.get(
    "",
    summary="List approvals: pending ones by default, all or one run's",
    dependencies=[require(Permission.READ)],
)
async def list_approvals(
    approvals: ApprovalsDep,
    principal: PrincipalDep,
    run_id: Annotated[str | None, Query(max_length=128)] = None,
    status: Literal["pending", "approved", "rejected", "cancelled", "any"] = "pending",
) -> dict[str, Any]:
    wanted = None if status == "any" else status
    return {"items": await approvals.list_approvals(run_id, wanted, principal.tenant)}


@router.get(
    "/{approval_id}",
    summary="One approval with its context",
    dependencies=[require(Permission.READ)],
)
async def show_approval(approval_id: str, approvals: ApprovalsDep) -> dict[str, Any]:
    return await approvals.show(approval_id)
