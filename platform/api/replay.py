"""POST /api/v1/runs/{id}/replay: a new run forked from a point of a run's history."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from aob.platform.api.bounds import INT64_MAX
from aob.platform.api.deps import Actor, CommandsDep, TraceId
from aob.platform.auth.http import require
from aob.platform.auth.principal import Permission

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])


class ReplayRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_event: int | None = Field(
        default=None,
        ge=0,
        le=INT64_MAX,
        description="keep the run's state after this event id (a stream id); "
        "omitted: start over with the definition and inputs it was submitted with",
    )


@router.post(
    "/{run_id}/replay",
    status_code=202,
    summary="Replay a run from a point of its history",
    dependencies=[require(Permission.OPERATE)],
)
async def replay_run(
    run_id: str,
    commands: CommandsDep,
    actor: Actor,
    trace_id: TraceId,
    body: ReplayRun | None = None,
) -> JSONResponse:
    from_event = body.from_event if body else None
    accepted = await commands.replay_run(run_id, from_event, actor=actor, trace_id=trace_id)
    location = f"/api/v1/runs/{accepted['run_id']}"
    return JSONResponse(accepted, status_code=202, headers={"Location": location})
