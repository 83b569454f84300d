"""POST /api/v1/runs/{id}/replay: a new run forked from a point of a run's history,
optionally with edited inputs or a patched definition (`aob.platform.replay`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from aob.platform.api.bounds import INT64_MAX
from aob.platform.api.deps import Actor, CommandsDep, PrincipalDep, TraceId
from aob.platform.api.runs import _charge_tier_change
from aob.platform.auth.http import require
from aob.platform.auth.principal import Permission
from aob.platform.replay import MAX_EDIT_OPERATIONS, Edits

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
    inputs: Any = Field(
        default=None, description="the fork's inputs, replacing the run's (when given)"
    )
    inputs_patch: Any = Field(
        default=None,
        description="an edit of the inputs: a JSON Patch (RFC 6902, an array) or a JSON "
        "merge patch (RFC 7396, anything else)",
    )
    definition_patch: list[Any] | None = Field(
        default=None,
        max_length=MAX_EDIT_OPERATIONS,
        description="a JSON Patch (RFC 6902) over the run's definition as it stood at "
        "the fork point; the result is validated as any submitted definition",
    )
    reason: str = Field(default="", max_length=2000, description="why, recorded on the fork")

    def edits(self) -> Edits:
        return Edits(
            inputs=self.inputs,
            replace_inputs="inputs" in self.model_fields_set,
            inputs_patch=self.inputs_patch,
            definition_patch=self.definition_patch,
            reason=self.reason,
        )


@router.post(
    "/{run_id}/replay",
    status_code=202,
    summary="Replay or fork a run from a point of its history, optionally with edits",
    dependencies=[require(Permission.OPERATE)],
)
async def replay_run(
    run_id: str,
    commands: CommandsDep,
    actor: Actor,
    trace_id: TraceId,
    principal: PrincipalDep,
    request: Request,
    body: ReplayRun | None = None,
) -> JSONResponse:
    """Completed nodes keep their outputs unless the edits affect them: those run again
    (`rerun_nodes` in the answer; the rules are in docs/forks.md)."""
    body = body or ReplayRun()
    if body.definition_patch:  # charged to the tier the patched workflow falls in
        run = await commands.run(run_id)
        await _charge_tier_change(
            request, principal.tenant, run["definition"], body.definition_patch
        )
    accepted = await commands.replay_run(
        run_id, body.from_event, actor=actor, trace_id=trace_id, edits=body.edits()
    )
    location = f"/api/v1/runs/{accepted['run_id']}"
    return JSONResponse(accepted, status_code=202, headers={"Location": location})
