"""Patch review: show a run's patch with its diff, approve or reject one awaiting review.

A workflow with `patch_policy: review` holds its agents' valid patches as proposed,
with review "pending". A reviewer's decision is a `PatchReviewed` event; the
coordinator then applies an approved patch (if it still applies to the run as it is)
or rejects it, and the run goes on.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from aob.events.codec import encode
from aob.events.ids import new_event_id
from aob.events.log.port import Append
from aob.events.types import RUNS_TOPIC, Event, PatchReviewed
from aob.platform.api.deps import Actor, CommandsDep, EngineDep, TraceId
from aob.platform.commands import Commands, now_ms
from aob.platform.engine import Engine
from aob.platform.problems import Problem, not_found
from aob.projections.workflow.materialize import (
    DEFAULT_PATCH_LIMITS,
    PatchReplayError,
    materialize,
)

router = APIRouter(prefix="/api/v1/runs", tags=["patches"])

DECISION_WAIT_S = 2.0  # how long a review waits to answer with the coordinator's decision


class Review(BaseModel):
    reason: str = Field(default="", max_length=2000, description="why, for the run's history")


@router.get("/{run_id}/patches/{patch_id}", summary="A patch, with its diff if undecided")
async def get_patch(
    run_id: str, patch_id: str, commands: CommandsDep, engine: EngineDep
) -> dict[str, Any]:
    """The patch; while it is undecided, `diff` shows what it would change in the run's
    current (materialized) workflow: nodes and edges added, removed or changed."""
    run = await commands.run(run_id)
    patch = await _patch(engine, run_id, patch_id)
    diff = None
    if patch["status"] == "proposed":
        diff = workflow_diff(run["definition"], patch["operations"])
    return {**patch, "diff": diff}


@router.post("/{run_id}/patches/{patch_id}/approve", summary="Approve a patch awaiting review")
async def approve_patch(
    run_id: str, patch_id: str, commands: CommandsDep, engine: EngineDep, actor: Actor,
    trace_id: TraceId, body: Review | None = None,
) -> JSONResponse:
    return await _review(engine, commands, run_id, patch_id, "approve",
                         body.reason if body else "", actor, trace_id)


@router.post("/{run_id}/patches/{patch_id}/reject", summary="Reject a patch awaiting review")
async def reject_patch(
    run_id: str, patch_id: str, commands: CommandsDep, engine: EngineDep, actor: Actor,
    trace_id: TraceId, body: Review | None = None,
) -> JSONResponse:
    return await _review(engine, commands, run_id, patch_id, "reject",
                         body.reason if body else "", actor, trace_id)


async def _review(
    engine: Engine, commands: Commands, run_id: str, patch_id: str,
    decision: Literal["approve", "reject"], reason: str, actor: str, trace_id: str,
) -> JSONResponse:
    """Record the decision; answer with the patch once the coordinator has decided
    (200), or as it stands if that takes longer (202)."""
    await commands.run(run_id)
    patch = await _patch(engine, run_id, patch_id)
    if patch["review"] != "pending":
        state = patch["review"] or f"not under review ({patch['status']})"
        raise Problem(409, "patch-not-awaiting-review", "Patch not awaiting review",
                      f"patch {patch_id!r} is {state}", status_now=patch["status"],
                      review=patch["review"])
    payload = PatchReviewed(run_id, patch_id, decision, actor, reason)
    event = Event(new_event_id(), run_id, now_ms(), payload, trace_id, None, actor)
    records = await engine.log.append([Append(RUNS_TOPIC, run_id, encode(event))])
    await engine.projected.wait_for(records)
    decided = await _decided(engine, run_id, patch_id)
    return JSONResponse(decided, status_code=200 if decided["status"] != "proposed" else 202)


async def _decided(engine: Engine, run_id: str, patch_id: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DECISION_WAIT_S
    while True:
        patch = await _patch(engine, run_id, patch_id)
        if patch["status"] != "proposed" or loop.time() > deadline:
            return patch
        await asyncio.sleep(0.01)


async def _patch(engine: Engine, run_id: str, patch_id: str) -> dict[str, Any]:
    patch = await engine.read_models.get_patch(run_id, patch_id)
    if patch is None:
        raise not_found("patch", f"{run_id}/{patch_id}")
    return patch


def workflow_diff(current: dict[str, Any], operations: Any) -> dict[str, Any]:
    """What `operations` change in `current`, by node and edge."""
    try:
        patched = materialize(current, [operations], limits=DEFAULT_PATCH_LIMITS)
    except PatchReplayError as error:
        return {"applies": False, "problem": str(error)}
    before, after = _nodes(current), _nodes(patched)
    old_edges, new_edges = _edges(current), _edges(patched)
    return {
        "applies": True,
        "added_nodes": [after[n] for n in after if n not in before],
        "removed_nodes": [n for n in before if n not in after],
        "changed_nodes": [
            {"id": n, "before": before[n], "after": after[n]}
            for n in after if n in before and before[n] != after[n]
        ],
        "added_edges": [e for e in new_edges if e not in old_edges],
        "removed_edges": [e for e in old_edges if e not in new_edges],
        "other_changes": sorted(
            k for k in {*current, *patched}
            if k not in ("nodes", "edges") and current.get(k) != patched.get(k)
        ),
    }


def _nodes(definition: dict[str, Any]) -> dict[str, Any]:
    nodes = definition.get("nodes")
    return {
        n["id"]: n for n in (nodes if isinstance(nodes, list) else [])
        if isinstance(n, dict) and isinstance(n.get("id"), str)
    }


def _edges(definition: dict[str, Any]) -> list[Any]:
    edges = definition.get("edges")
    return list(edges) if isinstance(edges, list) else []
