"""Tools for agents: composite tools (named, reusable pipelines) and OpenAPI documents.

Registering is an event (`ToolRegistered` on `aob.tools`); every agent worker folds
that topic into its catalog. Registering a name again replaces the tool. Tools belong
to the registrant's tenant: lists, searches and lookups show the caller's tenant's
only, and only that tenant's runs' agents use them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from aob.events.types import Json
from aob.platform.api.deps import Actor, CommandsDep, EngineDep, PrincipalDep, TraceId
from aob.platform.auth.http import require
from aob.platform.auth.principal import Permission
from aob.platform.problems import not_found

router = APIRouter(prefix="/api/v1/tools", tags=["tools"])


class CompositeTool(BaseModel):
    """A named pipeline agents run with execute_pipeline {"tool": name, "input": ...}."""

    name: str = Field(max_length=64)
    description: str = Field(default="", max_length=2000)
    steps: list[dict[str, Any]] = Field(description="pipeline steps, as in execute_pipeline")
    parameters: dict[str, Any] | None = Field(
        default=None, description="JSON Schema of the tool's input"
    )


class OpenApiDocument(BaseModel):
    """An OpenAPI 3 document whose operations agents call with openapi_action."""

    name: str = Field(max_length=64)
    description: str = Field(default="", max_length=2000)
    document: dict[str, Any]
    base_url: str | None = Field(default=None, description="default: the document's servers[0]")


@router.post(
    "",
    status_code=201,
    summary="Register a composite tool",
    dependencies=[require(Permission.OPERATE)],
)
async def register_tool(
    body: CompositeTool,
    commands: CommandsDep,
    principal: PrincipalDep,
    actor: Actor,
    trace_id: TraceId,
) -> JSONResponse:
    spec: dict[str, Json] = {"steps": body.steps}
    if body.parameters is not None:
        spec["parameters"] = body.parameters
    registered = await commands.register_tool(
        body.name,
        "pipeline",
        spec,
        body.description,
        tenant=principal.tenant,
        actor=actor,
        trace_id=trace_id,
    )
    return _created(registered)


@router.post(
    "/openapi",
    status_code=201,
    summary="Register an OpenAPI document",
    dependencies=[require(Permission.OPERATE)],
)
async def register_openapi(
    body: OpenApiDocument,
    commands: CommandsDep,
    principal: PrincipalDep,
    actor: Actor,
    trace_id: TraceId,
) -> JSONResponse:
    spec: dict[str, Json] = {"document": body.document}
    if body.base_url is not None:
        spec["base_url"] = body.base_url
    registered = await commands.register_tool(
        body.name,
        "openapi",
        spec,
        body.description,
        tenant=principal.tenant,
        actor=actor,
        trace_id=trace_id,
    )
    return _created(registered)


@router.get("", summary="Registered tools", dependencies=[require(Permission.READ)])
async def list_tools(engine: EngineDep, principal: PrincipalDep) -> dict[str, Any]:
    items = [
        {"name": t.name, "kind": t.kind, "description": t.description}
        for t in engine.tools.of_tenant(principal.tenant)
    ]
    return {"items": items}


@router.get(
    "/search",
    summary="Search tools and OpenAPI operations as agents do",
    dependencies=[require(Permission.READ)],
)
async def search_tools(
    engine: EngineDep, principal: PrincipalDep, q: Annotated[str, Query(max_length=500)] = ""
) -> dict[str, Any]:
    return {"items": engine.tools.search(q, tenant=principal.tenant)}


@router.get("/{name}", summary="A registered tool", dependencies=[require(Permission.READ)])
async def get_tool(name: str, engine: EngineDep, principal: PrincipalDep) -> dict[str, Any]:
    tool = engine.tools.get(name, tenant=principal.tenant)  # another tenant's: 404
    if tool is None:
        raise not_found("tool", name)
    return {
        "name": tool.name,
        "kind": tool.kind,
        "description": tool.description,
        "spec": tool.spec,
    }


def _created(registered: dict[str, Any]) -> JSONResponse:
    location = f"/api/v1/tools/{registered['name']}"
    return JSONResponse(registered, status_code=201, headers={"Location": location})
