"""POST /api/v1/runs/{id}/replay: a new run forked from a point of a run's history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from aob.events.codec import encode
from aob.events.ids import new_event_id
from aob.events.log.port import Append
from aob.events.types import RUNS_TOPIC, Event, RunSubmitted
from aob.platform.api.bounds import INT64_MAX
from aob.platform.api.deps import Actor, CommandsDep, EngineDep, TraceId
from aob.platform.commands import new_run_id, now_ms
from aob.platform.engine import Engine
from aob.platform.replay import fork

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])

HISTORY_PAGE = 10_000


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
    "/{run_id}/replay", status_code=202, summary="Replay a run from a point of its history"
)
async def replay_run(
    run_id: str,
    commands: CommandsDep,
    engine: EngineDep,
    actor: Actor,
    trace_id: TraceId,
    body: ReplayRun | None = None,
) -> JSONResponse:
    replayed = await commands.run(run_id)  # 404 for an unknown run
    await engine.projected.wait_caught_up(timeout=2.0)  # the history up to now
    history = await _history(engine, run_id)
    from_event = body.from_event if body else None
    forked = fork(run_id, history, from_event)
    new_id = new_run_id()
    submitted = RunSubmitted(
        new_id,
        forked.definition,
        forked.inputs,
        engine.known_types,
        forked.workflow_id,
        forked.version,
        forked.tag,
        forked.checkpoint(run_id),
        tenant=replayed.get("tenant"),  # a fork stays in its run's tenant
    )
    event = Event(new_event_id(), new_id, now_ms(), submitted, trace_id, None, actor)
    await engine.log.append([Append(RUNS_TOPIC, new_id, encode(event))])
    accepted = {
        "run_id": new_id,
        "status": "accepted",
        "replay_of": run_id,
        "from_event": from_event,
        "seeded_nodes": sorted(forked.outputs),
        "trace_id": trace_id,
    }
    return JSONResponse(accepted, status_code=202, headers={"Location": f"/api/v1/runs/{new_id}"})


async def _history(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        page = await engine.read_models.timeline(run_id, after_offset=after, limit=HISTORY_PAGE)
        rows += [row for row in page if row["topic"] == RUNS_TOPIC]
        if len(page) < HISTORY_PAGE:
            return rows
        after = page[-1]["offset"]
