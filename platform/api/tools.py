"""Tools for agents: composite tools (named, reusable pipelines) and OpenAPI documents.

Registering is an event (`ToolRegistered` on `aob.tools`); every agent worker folds
that topic into its catalog. Registering a name again replaces the tool.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from aob.events.codec import encode
from aob.events.ids import new_event_id
from aob.events.log.port import Append
from aob.events.types import TOOLS_TOPIC, Event, Json, ToolRegistered
from aob.platform.api.deps import Actor, EngineDep, TraceId
from aob.platform.commands import now_ms
from aob.platform.engine import Engine
from aob.platform.problems import Problem, not_found
from aob.workers.agent.catalog import InvalidTool, check_registration

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


@router.post("", status_code=201, summary="Register a composite tool")
async def register_tool(
    body: CompositeTool, engine: EngineDep, actor: Actor, trace_id: TraceId
) -> JSONResponse:
    spec: dict[str, Json] = {"steps": body.steps}
    if body.parameters is not None:
        spec["parameters"] = body.parameters
    return await _register(engine, body.name, "pipeline", spec, body.description, actor, trace_id)


@router.post("/openapi", status_code=201, summary="Register an OpenAPI document")
async def register_openapi(
    body: OpenApiDocument, engine: EngineDep, actor: Actor, trace_id: TraceId
) -> JSONResponse:
    spec: dict[str, Json] = {"document": body.document}
    if body.base_url is not None:
        spec["base_url"] = body.base_url
    return await _register(engine, body.name, "openapi", spec, body.description, actor, trace_id)


@router.get("", summary="Registered tools")
async def list_tools(engine: EngineDep) -> dict[str, Any]:
    items = [
        {"name": t.name, "kind": t.kind, "description": t.description}
        for t in sorted(engine.tools.tools.values(), key=lambda t: t.name)
    ]
    return {"items": items}


@router.get("/search", summary="Search tools and OpenAPI operations as agents do")
async def search_tools(
    engine: EngineDep, q: Annotated[str, Query(max_length=500)] = ""
) -> dict[str, Any]:
    return {"items": engine.tools.search(q)}


@router.get("/{name}", summary="A registered tool")
async def get_tool(name: str, engine: EngineDep) -> dict[str, Any]:
    tool = engine.tools.get(name)
    if tool is None:
        raise not_found("tool", name)
    return {"name": tool.name, "kind": tool.kind, "description": tool.description,
            "spec": tool.spec}


async def _register(
    engine: Engine, name: str, kind: str, spec: dict[str, Json], description: str,
    actor: str, trace_id: str,
) -> JSONResponse:
    try:
        check_registration(name, kind, spec)
    except InvalidTool as error:
        raise Problem(422, "invalid-tool", "Invalid tool", str(error)) from None
    payload = ToolRegistered(name, kind, spec, description)
    event = Event(new_event_id(), name, now_ms(), payload, trace_id, None, actor)
    await engine.log.append([Append(TOOLS_TOPIC, name, encode(event))])
    await engine.tools.catch_up(engine.log)  # read your write
    body = {"name": name, "kind": kind, "description": description}
    return JSONResponse(body, status_code=201, headers={"Location": f"/api/v1/tools/{name}"})
