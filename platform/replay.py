"""Replay: a new run forked from the state of another at a point of its history.

The fork takes the run's definition as materialized by then (its base plus the
patches applied so far), its inputs, and the outputs of the nodes that had
completed: `RunSubmitted.checkpoint` carries them, and the coordinator starts
those nodes out completed, so only the rest of the workflow runs again. Nodes
inside loops are never seeded (a loop reruns whole); failed, skipped and
unfinished nodes run again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import jsonpointer

from aob.platform.problems import Problem
from aob.projections.workflow.compiler import InvalidDefinition, compile_workflow


@dataclass(frozen=True, slots=True)
class Fork:
    definition: dict[str, Any]
    inputs: Any
    workflow_id: str | None
    version: int | None
    tag: str | None
    from_event: int | None
    outputs: dict[str, Any] = field(default_factory=dict)

    def checkpoint(self, run_id: str) -> dict[str, Any] | None:
        if self.from_event is None:
            return None
        return {"run_id": run_id, "from_event": self.from_event, "outputs": self.outputs}


def fork(run_id: str, history: Sequence[dict[str, Any]], from_event: int | None) -> Fork:
    """The fork of a run after its event `from_event` (None: from its very start).

    `history` is the run's timeline, in log order.
    """
    if not history or history[0]["type"] != "RunSubmitted":
        raise Problem(
            409,
            "no-history",
            "Run history unavailable",
            f"the history of run {run_id!r} does not start with its submission",
        )
    submitted = history[0]["data"]
    start = Fork(
        submitted["definition"],
        submitted["inputs"],
        submitted.get("workflow_id"),
        submitted.get("version"),
        submitted.get("tag"),
        None,
    )
    if from_event is None:
        return start
    first, last = history[0]["offset"], history[-1]["offset"]
    if not first <= from_event <= last:
        raise Problem(
            422,
            "bad-event",
            "No such event",
            f"run {run_id!r} has events {first} to {last}, not {from_event}",
            first_event=first,
            last_event=last,
        )
    kept = [row for row in history if row["offset"] <= from_event]
    definition = _materialized(run_id, start.definition, kept)
    outputs = _completed_outputs(kept, _loop_nodes(definition))
    return Fork(
        definition, start.inputs, start.workflow_id, start.version, start.tag, from_event, outputs
    )


def _materialized(run_id: str, base: dict[str, Any], rows: Sequence[dict[str, Any]]) -> Any:
    """The base definition with the patches applied by then, in order."""
    proposed = {
        r["data"]["patch_id"]: r["data"]["operations"] for r in rows if r["type"] == "PatchProposed"
    }
    definition: Any = base
    for row in rows:
        if row["type"] != "PatchApplied":
            continue
        patch_id = row["data"]["patch_id"]
        try:
            definition = jsonpatch.apply_patch(definition, proposed[patch_id])
        except (KeyError, jsonpatch.JsonPatchException, jsonpointer.JsonPointerException):
            raise Problem(
                409,
                "no-history",
                "Run history inconsistent",
                f"patch {patch_id!r} of run {run_id!r} cannot be replayed",
            ) from None
    return definition


def _loop_nodes(definition: Any) -> frozenset[str]:
    try:
        ir = compile_workflow(definition)
    except InvalidDefinition:
        return frozenset()  # nothing completed in a run whose definition did not compile
    return frozenset().union(*ir.loop_bodies)


def _completed_outputs(rows: Sequence[dict[str, Any]], in_loops: frozenset[str]) -> dict[str, Any]:
    """Each node's output if its latest instance by then had completed."""
    outputs: dict[str, Any] = {}
    for row in rows:
        node_id = row["data"].get("node_id")
        if node_id is None or node_id in in_loops:
            continue
        if row["type"] == "NodeCompleted":
            outputs[node_id] = row["data"]["output"]
        elif row["type"] in ("NodeScheduled", "NodeFailed", "NodeSkipped"):
            outputs.pop(node_id, None)  # a later instance started, failed or was skipped
    return outputs
