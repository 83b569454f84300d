"""Replay and fork: a new run from the state of another at a point of its history,
optionally with edits.

The fork is what the coordinator's fold had built of the run by then: the run's events
up to that point are folded again (`aob.projections.coordinator.fold.replay`), so the
fork takes the definition as the fold materialized it (its base plus the patches
applied so far), its inputs, and the outputs of the nodes whose latest instance had
completed. `RunSubmitted.checkpoint` carries them, and the coordinator starts those
nodes out completed, so only the rest of the workflow runs again. Nodes inside loops
are never seeded (a loop reruns whole); failed, skipped and unfinished nodes run again.

Edits (`Edits`) change the fork's inputs (replaced, or an RFC 7396 merge patch, or an
RFC 6902 JSON Patch) and/or its definition (a JSON Patch). What is carried over must
still hold under the edits, so a node that had completed is run again, not carried,
when (`rerun_nodes`):
- its own definition changed (type, config, retry, timeout, join) or it is new, or the
  edges into it changed;
- the inputs changed and it may read them (its jq programs and templates mention
  `.inputs`, or are too rich to tell; agents and custom workers may read anything), or
  a condition on an edge into it may read them;
- it may read the output of a node that runs again or was removed (the compiler's
  per-node `reads`; a node that may read every output reruns if any node does);
- a node upstream of it runs again (its routing, and what flowed to it, may differ).
The checkpoint records the parent, the fork point and the edits (`edits`, with the
completed nodes that run again in `edits.rerun`), so the audit timeline shows them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import jsonpatch
import jsonpointer

from aob.events.types import PAYLOAD_BY_NAME, RUNS_TOPIC, Event, Json, RunSubmitted
from aob.platform.problems import Problem
from aob.projections.coordinator.fold import replay
from aob.projections.coordinator.state import NodeStatus
from aob.projections.workflow.compiler import compile_workflow
from aob.projections.workflow.definition import (
    InvalidDefinition,
    document_size,
    placeholders,
    template_strings,
)
from aob.projections.workflow.ir import NodeSpec, WorkflowIR
from aob.projections.workflow.materialize import json_equal
from aob.projections.workflow.simple_jq import node_reads

HISTORY_PAGE = 10_000
# Bounds on a fork's edits (the request body is bounded too, by AOB_MAX_REQUEST_BYTES
# in aob.platform.api.bounds): operations per JSON Patch, and the size of the
# edited inputs or definition as compact JSON (a chain of `copy` operations doubles a
# document each step: the size is checked after every operation).
MAX_EDIT_OPERATIONS: Final = 1000
MAX_EDITED_BYTES: Final = 1 << 20
_PATCH_ERRORS = (
    jsonpatch.JsonPatchException,
    jsonpointer.JsonPointerException,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    RecursionError,
)


@dataclass(frozen=True, slots=True)
class Logged:
    """A run event and its position (offset) in the run's partition."""

    offset: int
    event: Event


@dataclass(frozen=True, slots=True)
class Edits:
    """What a fork changes of its parent. `inputs` replaces the inputs when
    `replace_inputs`; `inputs_patch` is a JSON Patch (a list) or a JSON merge patch
    (anything else) over them; `definition_patch` a JSON Patch over the definition."""

    inputs: Json = None
    replace_inputs: bool = False
    inputs_patch: Json = None
    definition_patch: list[Any] | None = None
    reason: str = ""

    def __bool__(self) -> bool:
        return self.replace_inputs or self.inputs_patch is not None or bool(self.definition_patch)

    def recorded(self, rerun: Sequence[str]) -> dict[str, Any]:
        """The edits as the fork's checkpoint keeps them, for audit."""
        kept: dict[str, Any] = {"rerun": list(rerun)}
        if self.replace_inputs:
            kept["inputs"] = self.inputs
        if self.inputs_patch is not None:
            kept["inputs_patch"] = self.inputs_patch
        if self.definition_patch:
            kept["definition_patch"] = self.definition_patch
        if self.reason:
            kept["reason"] = self.reason
        return kept


NO_EDITS: Final = Edits()


@dataclass(frozen=True, slots=True)
class Fork:
    definition: dict[str, Any]
    inputs: Any
    workflow_id: str | None
    version: int | None
    tag: str | None
    from_event: int | None
    outputs: dict[str, Any] = field(default_factory=dict)
    edits: Edits = NO_EDITS
    rerun: tuple[str, ...] = ()  # nodes that had completed, run again because of the edits

    def checkpoint(self, run_id: str) -> dict[str, Any]:
        """What RunSubmitted.checkpoint records of the parent `run_id`: every fork
        names its parent, a replay from the start too (it carries no outputs)."""
        kept = {"run_id": run_id, "from_event": self.from_event, "outputs": self.outputs}
        return {**kept, "edits": self.edits.recorded(self.rerun)} if self.edits else kept


class Timeline(Protocol):
    async def timeline(
        self, key: str, after_offset: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]: ...


async def run_events(read: Timeline, run_id: str) -> list[Logged]:
    """The run's events on aob.runs, in log order, from its timeline read model (set
    aside records, which carry no event, left out)."""
    events: list[Logged] = []
    after: int | None = None
    while True:
        page = await read.timeline(run_id, after_offset=after, limit=HISTORY_PAGE)
        events += [logged(row) for row in page if row["topic"] == RUNS_TOPIC and _event(row)]
        if len(page) < HISTORY_PAGE:
            return events
        after = page[-1]["offset"]


def _event(row: dict[str, Any]) -> bool:
    return row.get("event_id") is not None and row["type"] in PAYLOAD_BY_NAME


def logged(row: dict[str, Any]) -> Logged:
    """A timeline row as the event it shows."""
    payload = PAYLOAD_BY_NAME[row["type"]](**row["data"])
    event = Event(
        row["event_id"],
        row["key"],
        row["occurred_at"],
        payload,
        row.get("trace_id") or "",
        row.get("causation_id"),
        row.get("actor") or "system",
    )
    return Logged(row["offset"], event)


def _compiled(definition: dict[str, Any]) -> WorkflowIR:
    try:
        return compile_workflow(definition)
    except InvalidDefinition as error:
        problems = [{"path": p.path, "message": p.message} for p in error.problems]
        raise Problem(
            422,
            "invalid-workflow",
            "Invalid workflow definition",
            f"the patched definition has {len(problems)} problem(s)",
            errors=problems,
        ) from None


def fork(
    run_id: str,
    history: Sequence[Logged],
    from_event: int | None,
    edits: Edits = NO_EDITS,
    check: Callable[[dict[str, Any]], object] = _compiled,
) -> Fork:
    """The fork of a run after its event at offset `from_event` (None: from its very
    start), with `edits`. `history` is the run's events, in log order. `check` refuses
    an edited definition that is invalid (a Problem naming the paths)."""
    submitted = history[0].event.payload if history else None
    if not isinstance(submitted, RunSubmitted):
        raise Problem(
            409,
            "no-history",
            "Run history unavailable",
            f"the history of run {run_id!r} does not start with its submission",
        )
    inputs = edited_inputs(submitted.inputs, edits)
    if from_event is None:
        definition = edited_definition(submitted.definition, edits, check)
        start = (submitted.workflow_id, submitted.version, submitted.tag)
        return Fork(definition, inputs, *start, None, edits=edits)
    first, last = history[0].offset, history[-1].offset
    if not first <= from_event <= last:
        raise Problem(
            422,
            "bad-event",
            "No such event",
            f"run {run_id!r} has events {first} to {last}, not {from_event}",
            first_event=first,
            last_event=last,
        )
    state = replay([e.event for e in history if e.offset <= from_event])
    assert state is not None  # the history starts with the run's submission
    definition = edited_definition(state.definition, edits, check)
    in_loops = frozenset().union(*state.ir.loop_bodies)
    completed = {
        node_id: state.outputs[node_id]
        for node_id, node in state.nodes.items()
        if node.status is NodeStatus.COMPLETED and node_id not in in_loops
    }
    rerun: frozenset[str] = frozenset()
    if edits:
        after = _compiled(definition) if edits.definition_patch else state.ir
        inputs_changed = not json_equal(inputs, submitted.inputs)
        rerun = rerun_nodes(state.ir, after, inputs_changed=inputs_changed) & set(completed)
        completed = {n: o for n, o in completed.items() if n in after.nodes and n not in rerun}
    return Fork(
        definition,
        inputs,
        submitted.workflow_id,
        submitted.version,
        submitted.tag,
        from_event,
        completed,
        edits,
        tuple(sorted(rerun)),
    )


# --- edits -------------------------------------------------------------------------


def edited_inputs(inputs: Json, edits: Edits) -> Json:
    """The fork's inputs: replaced, then patched (a list: JSON Patch, else merge patch)."""
    result = copy.deepcopy(edits.inputs if edits.replace_inputs else inputs)
    patch = edits.inputs_patch
    if isinstance(patch, list):
        result = apply_json_patch(result, patch, "inputs_patch")
    elif patch is not None:
        result = merge_patch(result, patch)
    _check_size(result, "inputs")
    return result


def edited_definition(
    definition: dict[str, Any], edits: Edits, check: Callable[[dict[str, Any]], object]
) -> dict[str, Any]:
    if not edits.definition_patch:
        return definition
    patched = apply_json_patch(definition, edits.definition_patch, "definition_patch")
    if not isinstance(patched, dict):
        raise _bad_edit("/definition_patch", "the patched definition is not an object")
    check(patched)
    return patched


def apply_json_patch(document: Json, operations: list[Any], what: str) -> Json:
    """`document` (a copy) with the RFC 6902 `operations` applied one by one; a Problem
    naming the first operation that fails (`/<what>/<index>`) or makes the document
    too large. `test` compares as JSON does (jsonpatch's says true == 1)."""
    if len(operations) > MAX_EDIT_OPERATIONS:
        raise _bad_edit(f"/{what}", f"{len(operations)} operations > limit {MAX_EDIT_OPERATIONS}")
    result = copy.deepcopy(document)
    for index, op in enumerate(copy.deepcopy(operations)):
        where = f"/{what}/{index}"
        try:
            result = _apply_one(result, op)
        except _PATCH_ERRORS as error:
            raise _bad_edit(where, f"{_describe(op)}: {error}") from None
        except _TestFailed as failure:
            raise _bad_edit(where, f"test failed: {failure}") from None
        _check_size(result, where)
    return result


class _TestFailed(Exception):
    pass


def _apply_one(document: Json, op: Any) -> Json:
    if not isinstance(op, dict):
        raise TypeError("an operation must be an object")
    if op.get("op") != "test":
        return jsonpatch.JsonPatch([op]).apply(document, in_place=True)
    actual = jsonpointer.resolve_pointer(document, op.get("path", ""))
    if "value" not in op or not json_equal(actual, op["value"]):
        raise _TestFailed(f"the value at {op.get('path') or '/'} differs from the tested value")
    return document


def _describe(op: Any) -> str:
    return f"{op.get('op')} {op.get('path')}" if isinstance(op, dict) else "operation"


def merge_patch(target: Json, patch: Json) -> Json:
    """RFC 7396: `patch`'s members replace `target`'s, null removes one, objects merge."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _check_size(document: Json, where: str) -> None:
    try:
        size = document_size(document)
    except (TypeError, ValueError, RecursionError):
        raise _bad_edit(where, "the result is not JSON") from None
    if size > MAX_EDITED_BYTES:
        raise _bad_edit(where, f"the result passes {MAX_EDITED_BYTES} bytes ({size})")


def _bad_edit(path: str, message: str) -> Problem:
    return Problem(
        422,
        "invalid-edit",
        "Invalid fork edit",
        f"{path}: {message}",
        errors=[{"path": path, "message": message}],
    )


# --- what runs again -------------------------------------------------------------------


def rerun_nodes(before: WorkflowIR, after: WorkflowIR, *, inputs_changed: bool) -> frozenset[str]:
    """The nodes of `after` whose outputs under `before` (the parent's workflow) cannot
    be carried over (see the module docstring for the rules)."""
    removed = frozenset(before.nodes) - frozenset(after.nodes)
    dirty = {n for n in after.nodes if _redefined(n, before, after)}
    if inputs_changed:
        dirty |= {n for n in after.nodes if _may_read_inputs(after, n)}
    grew = True
    while grew:  # a fixpoint: `reads` may point at nodes later in the order
        grew = False
        for node_id in after.order:
            if node_id not in dirty and _depends_on(after, node_id, dirty | removed):
                dirty.add(node_id)
                grew = True
    return frozenset(dirty)


def _redefined(node_id: str, before: WorkflowIR, after: WorkflowIR) -> bool:
    if node_id not in before.nodes:
        return True
    return before.nodes[node_id] != after.nodes[node_id] or set(before.incoming[node_id]) != set(
        after.incoming[node_id]
    )


def _may_read_inputs(ir: WorkflowIR, node_id: str) -> bool:
    spec = ir.nodes[node_id]
    conditions = [e.when for e in ir.incoming[node_id] if e.when is not None]
    return _spec_may_read_inputs(spec) or any(map(_program_may_read_inputs, conditions))


def _spec_may_read_inputs(spec: NodeSpec) -> bool:
    if spec.reads is None:  # an agent, a custom worker, a program too rich to tell
        return True
    if spec.type == "transform":
        programs = [spec.config.get("expr", "")]
    else:  # templated types (http, hitl): every `{{ }}` of the config
        programs = [p for _, text in template_strings(spec.config) for p in placeholders(text)]
    return any(map(_program_may_read_inputs, programs))


def _program_may_read_inputs(program: str) -> bool:
    """Whether a jq program may see `.inputs`. The compiler's `node_reads` tracks node
    outputs only; a simple program names what it reads, so one that never spells
    `inputs` (and escapes nothing, which could spell it) cannot reach them."""
    return node_reads(program) is None or "inputs" in program or "\\" in program


def _depends_on(ir: WorkflowIR, node_id: str, dirty: set[str] | frozenset[str]) -> bool:
    others = dirty - {node_id}
    if not others:
        return False
    incoming = ir.incoming[node_id]
    if any(e.source in others for e in incoming):
        return True
    reads = [ir.nodes[node_id].reads, *(e.reads for e in incoming if e.when is not None)]
    return any(r is None or bool(r & others) for r in reads)
