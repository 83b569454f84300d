"""Workflows and tags: definitions are versioned; tags point at a version like git refs."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from aob.platform.api.bounds import INT64_MAX
from aob.platform.api.deps import Actor, CommandsDep, EngineDep, PrincipalDep, TraceId
from aob.platform.auth.http import require
from aob.platform.auth.principal import Permission
from aob.projections.workflow.definition import workflow_schema

router = APIRouter(prefix="/api/v1", tags=["workflows"])


class CreateWorkflow(BaseModel):
    definition: dict[str, Any]
    tag: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]*$",
        description="Tag to move to the new version; defaults to the workflow's name, '' for none",
    )


class MoveTag(BaseModel):
    workflow_id: str = Field(max_length=128)
    version: int | None = Field(
        default=None, ge=1, le=INT64_MAX, description="Defaults to the latest version"
    )


class ValidateWorkflow(BaseModel):
    definition: Any


@router.post(
    "/workflows",
    status_code=201,
    summary="Create a workflow (or a new version of it)",
    dependencies=[require(Permission.OPERATE)],
)
async def create_workflow(
    body: CreateWorkflow,
    commands: CommandsDep,
    actor: Actor,
    trace_id: TraceId,
    principal: PrincipalDep,
) -> JSONResponse:
    created = await commands.create_workflow(
        body.definition, tag=body.tag, actor=actor, trace_id=trace_id, tenant=principal.tenant
    )
    location = f"/api/v1/workflows/{created['workflow_id']}?version={created['version']}"
    return JSONResponse(created, status_code=201, headers={"Location": location})


@router.post(
    "/workflows/validate",
    summary="Validate a definition without storing it",
    dependencies=[require(Permission.READ)],
)
async def validate_workflow(body: ValidateWorkflow, commands: CommandsDep) -> dict[str, Any]:
    # In a thread: compiling a definition's jq programs (each within the limits, which
    # are checked first) may take a fraction of a second this loop must not wait.
    warnings = await asyncio.to_thread(commands.validate, body.definition)
    # Warnings (nodes of unknown types) only when there are some: {"valid": true} stays
    # the whole answer for a clean definition.
    return {"valid": True, "warnings": warnings} if warnings else {"valid": True}


@router.get(
    "/workflows",
    summary="List workflows (latest version of each)",
    dependencies=[require(Permission.READ)],
)
async def list_workflows(engine: EngineDep, principal: PrincipalDep) -> dict[str, Any]:
    return {"items": await engine.read_models.list_workflows(principal.tenant)}


@router.get(
    "/workflows/{ref}", summary="A workflow by tag or id", dependencies=[require(Permission.READ)]
)
async def get_workflow(
    ref: str,
    commands: CommandsDep,
    principal: PrincipalDep,
    version: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
) -> dict[str, Any]:
    return await commands.resolve_workflow(ref, version, principal.tenant)


@router.get("/tags", summary="List tags", dependencies=[require(Permission.READ)])
async def list_tags(engine: EngineDep, principal: PrincipalDep) -> dict[str, Any]:
    return {"items": await engine.read_models.list_tags(principal.tenant)}


@router.post(
    "/tags/{name}/move",
    summary="Point a tag at a workflow version",
    dependencies=[require(Permission.OPERATE)],
)
async def move_tag(
    name: Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")],
    body: MoveTag,
    commands: CommandsDep,
    actor: Actor,
    trace_id: TraceId,
    principal: PrincipalDep,
) -> dict[str, Any]:
    return await commands.move_tag(
        name,
        body.workflow_id,
        body.version,
        actor=actor,
        trace_id=trace_id,
        tenant=principal.tenant,
    )


@router.get(
    "/schema/workflow",
    summary="JSON Schema of workflow definitions",
    dependencies=[require(Permission.READ)],
)
async def schema() -> dict[str, Any]:
    return workflow_schema()
