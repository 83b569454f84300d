"""RFC 6902 patches on a running workflow's definition, proposed by agents.

`apply_patch` decides whether a patch may be accepted: the operations are
checked, applied to a copy one by one under a size budget, and the result must
be a valid definition that leaves started or finished ("frozen") nodes and their
incoming edges untouched and spawns no more agents than allowed. `materialize`
replays patches that were already accepted.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonpatch
import jsonpointer

from aob.events.types import Json

from .definition import DEFAULT_LIMITS, Limits, Problem, document_size, validate_definition

_OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})
_NEEDS_VALUE = frozenset({"add", "replace", "test"})
_NEEDS_FROM = frozenset({"move", "copy"})
_POINTER = re.compile(r"(/([^~/]|~[01])*)*")
_RETRY_DEFAULTS = {
    "max_attempts": 1,
    "initial_backoff_ms": 1000,
    "multiplier": 2.0,
    "max_backoff_ms": 60_000,
}
# What can go wrong applying one well-shaped operation (paths that do not resolve,
# indexes out of range, moving a value into itself, ...).
_APPLY_ERRORS = (
    jsonpatch.JsonPatchException,
    jsonpointer.JsonPointerException,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
)


@dataclass(frozen=True, slots=True)
class PatchLimits:
    """Bounds on what one run's patches may do."""

    max_operations: int = 100
    max_document_bytes: int = 1 << 20
    max_agent_spawns: int = 5
    max_nodes: int = DEFAULT_LIMITS.max_nodes
    max_edges: int = DEFAULT_LIMITS.max_edges

    @property
    def definition(self) -> Limits:
        """The limits the patched definition must meet."""
        return Limits(self.max_nodes, self.max_edges, self.max_document_bytes)


DEFAULT_PATCH_LIMITS = PatchLimits()


@dataclass(frozen=True, slots=True)
class PatchOutcome:
    """The patched definition, or the problems that refuse the patch."""

    definition: dict[str, Any] | None
    added_nodes: tuple[str, ...] = ()
    added_agents: int = 0
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


class PatchReplayError(ValueError):
    """An accepted patch no longer applies: the run's history is inconsistent."""


def apply_patch(
    current: dict[str, Any],
    operations: list[Any],
    *,
    frozen_nodes: frozenset[str],
    base_node_ids: frozenset[str],
    agents_added_so_far: int,
    limits: PatchLimits = DEFAULT_PATCH_LIMITS,
) -> PatchOutcome:
    """Apply `operations` to a copy of `current` if every rule allows it.

    `frozen_nodes` are the nodes that started or finished. Every node that is an
    agent in the result and was not one in `current` counts against the run's agent
    cap, whichever operation made it one: added, retyped (`replace /nodes/3/type`,
    also of a node of the submitted definition), replaced whole, moved or copied.
    `base_node_ids` (the submitted definition's nodes) no longer exempts anything:
    exempting them let a patch retype pending base nodes into agents past the cap.
    Problems about operations point at "/<op index>"; the others point into the result.
    """
    try:
        return _apply_patch(
            current, operations, frozen_nodes, base_node_ids, agents_added_so_far, limits
        )
    except RecursionError:
        return _refused([Problem("", "operation shape: values nest too deeply")])


def _apply_patch(
    current: dict[str, Any],
    operations: list[Any],
    frozen_nodes: frozenset[str],
    base_node_ids: frozenset[str],
    agents_added_so_far: int,
    limits: PatchLimits,
) -> PatchOutcome:
    problems = _shape_problems(operations, limits.max_operations)
    if problems:
        return _refused(problems)
    result, problem = _apply_in_place(copy.deepcopy(current), operations, limits.max_document_bytes)
    if problem is not None:
        return _refused([problem])
    problems = [
        Problem(p.path, f"invalid result: {p.message}")
        for p in validate_definition(result, limits.definition)
    ]
    if not isinstance(result, dict):
        return _refused(problems)
    problems += _frozen_problems(current, result, frozen_nodes)
    spawned = new_agents(current, result)
    problems += _agent_problems(spawned, agents_added_so_far, limits.max_agent_spawns)
    if problems:
        return _refused(problems)
    old_ids = set(_node_ids(current))
    added = tuple(n for n in _node_ids(result) if n not in old_ids)
    return PatchOutcome(result, added, len(spawned))


def materialize(
    base: dict[str, Any], patches: Sequence[list[Any]], *, limits: PatchLimits | None = None
) -> dict[str, Any]:
    """`base` with the accepted `patches` applied in order (inputs are not changed).

    With `limits`, each patch's operation count and the document's size are bounded
    (for patches not accepted yet: a chain of copies doubles the document each step).
    """
    doc: Json = copy.deepcopy(base)
    max_operations = None if limits is None else limits.max_operations
    max_bytes = None if limits is None else limits.max_document_bytes
    for number, operations in enumerate(patches):
        problems = _shape_problems(operations, max_operations)
        if problems:
            raise PatchReplayError(f"patch {number}: {problems[0]}")
        doc, problem = _apply_in_place(doc, operations, max_bytes)
        if problem is not None:
            raise PatchReplayError(f"patch {number}: {problem}")
    if not isinstance(doc, dict):
        raise PatchReplayError("the patched definition is not an object")
    return doc


def _refused(problems: Sequence[Problem]) -> PatchOutcome:
    return PatchOutcome(None, problems=tuple(problems))


# --- operations --------------------------------------------------------------------


def _shape_problems(operations: Json, max_operations: int | None) -> list[Problem]:
    """RFC 6902 shape of the operation list, checked before anything is applied."""
    if not isinstance(operations, list):
        return [Problem("", "operation shape: a patch must be a JSON array of operations")]
    if max_operations is not None and len(operations) > max_operations:
        return [
            Problem("", f"operation count: {len(operations)} operations > limit {max_operations}")
        ]
    return [
        Problem(f"/{index}", f"operation shape: {reason}")
        for index, op in enumerate(operations)
        if (reason := _shape_error(op)) is not None
    ]


def _shape_error(op: Json) -> str | None:
    if not isinstance(op, dict):
        return "an operation must be an object"
    kind = op.get("op")
    if not isinstance(kind, str) or kind not in _OPS:
        return f"'op' must be one of {', '.join(sorted(_OPS))}"
    if not _is_pointer(op.get("path")):
        return "'path' must be a JSON Pointer string"
    if kind in _NEEDS_VALUE and "value" not in op:
        return f"a {kind} operation needs a 'value'"
    if kind in _NEEDS_FROM and not _is_pointer(op.get("from")):
        return f"a {kind} operation needs a 'from' JSON Pointer string"
    if kind == "move" and op["path"].startswith(op["from"] + "/"):
        return "a value cannot be moved into one of its own children"
    return None


def _is_pointer(value: Json) -> bool:
    return isinstance(value, str) and _POINTER.fullmatch(value) is not None


def _apply_in_place(
    doc: Json, operations: list[Any], max_bytes: int | None
) -> tuple[Json, Problem | None]:
    """Apply well-shaped operations to `doc` (a copy), stopping at the first failure.

    Returns the new document (the root may be replaced) or the failure. The size
    is checked after each operation, so a chain of copies that doubles the
    document is stopped as soon as it passes `max_bytes`.
    """
    for index, op in enumerate(copy.deepcopy(operations)):  # values must not alias
        try:
            doc = _apply_one(doc, op)
            too_big = max_bytes is not None and document_size(doc) > max_bytes
        except _APPLY_ERRORS as error:
            return None, Problem(f"/{index}", f"operation failed: {op['op']} {op['path']}: {error}")
        except _TestFailed as failure:
            return None, Problem(f"/{index}", f"test failed: {failure}")
        if too_big:
            return None, Problem(
                f"/{index}", f"document size: the definition passes {max_bytes} bytes"
            )
    return doc, None


class _TestFailed(Exception):
    pass


def _apply_one(doc: Json, op: dict[str, Any]) -> Json:
    """Apply one operation in place; `test` is ours, see `json_equal`."""
    if op["op"] != "test":
        return jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
    try:
        actual = jsonpointer.resolve_pointer(doc, op["path"])
    except jsonpointer.JsonPointerException as error:
        raise _TestFailed(f"{op['path']}: {error}") from None
    if not json_equal(actual, op["value"]):
        raise _TestFailed(f"the value at {op['path'] or '/'} differs from the tested value")
    return doc


def json_equal(a: Json, b: Json) -> bool:
    """JSON equality: types must match (true is not 1), numbers compare by value
    (1 == 1.0), arrays element-wise, objects by keys whatever their order.

    Python's `==` (which jsonpatch's own test uses) says True == 1.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(json_equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return a is None and b is None


# --- rules on the result --------------------------------------------------------------


def _nodes(doc: Mapping[str, Json]) -> Iterator[tuple[int, dict[str, Json]]]:
    """(index, node) for object nodes with a string id, first declaration only."""
    nodes = doc.get("nodes")
    seen: set[str] = set()
    for index, node in enumerate(nodes if isinstance(nodes, list) else []):
        if isinstance(node, dict) and isinstance(node.get("id"), str) and node["id"] not in seen:
            seen.add(node["id"])
            yield index, node


def _node_ids(doc: Mapping[str, Json]) -> list[str]:
    return [node["id"] for _, node in _nodes(doc)]


def _frozen_problems(
    current: Mapping[str, Json], result: Mapping[str, Json], frozen: frozenset[str]
) -> list[Problem]:
    before = {node["id"]: node for _, node in _nodes(current)}
    after = {node["id"]: (index, node) for index, node in _nodes(result)}
    problems: list[Problem] = []
    for node_id in sorted(frozen):
        if node_id not in after:
            problems.append(
                Problem("/nodes", f"frozen node: {node_id!r} has started and cannot be removed")
            )
            continue
        index, node = after[node_id]
        changed = _changed_fields(before.get(node_id), node)
        if changed:
            problems.append(
                Problem(
                    f"/nodes/{index}",
                    f"frozen node: {node_id!r} has started and cannot change "
                    f"({', '.join(changed)})",
                )
            )
    return problems + _frozen_edge_problems(current, result, frozen)


def _settings(node: Mapping[str, Json]) -> dict[str, Json]:
    """What makes a node run the way it does, with defaults filled in."""
    retry = node.get("retry", {})
    return {
        "id": node.get("id"),
        "type": node.get("type"),
        "config": node.get("config", {}),
        "retry": {**_RETRY_DEFAULTS, **retry} if isinstance(retry, dict) else retry,
        "timeout_ms": node.get("timeout_ms"),
        "join": node.get("join", "all"),
    }


def _changed_fields(before: Mapping[str, Json] | None, after: Mapping[str, Json]) -> list[str]:
    if before is None:
        return ["it is not in the current definition"]
    old, new = _settings(before), _settings(after)
    return [key for key in old if not json_equal(old[key], new[key])]


def _frozen_edge_problems(
    current: Mapping[str, Json], result: Mapping[str, Json], frozen: frozenset[str]
) -> list[Problem]:
    before, after = _incoming(current, frozen), _incoming(result, frozen)
    problems = []
    for node_id in sorted(frozen):
        added = after[node_id] - before[node_id]
        removed = before[node_id] - after[node_id]
        if added or removed:
            changes = [f"added {e}" for e in sorted(added)] + [
                f"removed {e}" for e in sorted(removed)
            ]
            problems.append(
                Problem(
                    "/edges",
                    f"frozen incoming edges: {node_id!r} has started, its incoming edges "
                    f"cannot change ({'; '.join(changes)})",
                )
            )
    return problems


def _incoming(doc: Mapping[str, Json], frozen: frozenset[str]) -> dict[str, Counter[str]]:
    """The multiset of edges into each frozen node, each described as text."""
    incoming: dict[str, Counter[str]] = {node_id: Counter() for node_id in frozen}
    edges = doc.get("edges")
    for edge in edges if isinstance(edges, list) else []:
        target = edge.get("to") if isinstance(edge, dict) else None
        if isinstance(target, str) and target in incoming:  # a patch may put anything there
            incoming[target][_describe_edge(edge)] += 1
    return incoming


def _describe_edge(edge: Mapping[str, Json]) -> str:
    """A canonical text for an edge (equal edges, equal texts)."""
    text = f"{edge.get('from')!r} -> {edge.get('to')!r}"
    if edge.get("when") is not None:
        text += f" when {edge['when']!r}"
    loop = edge.get("loop")
    if loop is not None:
        iterations = loop.get("max_iterations") if isinstance(loop, dict) else loop
        text += f" loop {iterations!r}"
    return text


def new_agents(current: Mapping[str, Json], result: Mapping[str, Json]) -> list[str]:
    """The nodes that are agents in `result` and were not agents in `current`: what a
    patch spawns, however its operations got there (the documents are compared, not
    the operations, so no sequence of add/replace/move/copy escapes the count)."""
    old_agents = {node["id"] for _, node in _nodes(current) if node.get("type") == "agent"}
    return [
        node["id"]
        for _, node in _nodes(result)
        if node.get("type") == "agent" and node["id"] not in old_agents
    ]


def _agent_problems(spawned: list[str], so_far: int, limit: int) -> list[Problem]:
    if so_far + len(spawned) <= limit:
        return []
    return [
        Problem(
            "/nodes",
            f"agent spawn limit: this patch makes {len(spawned)} node(s) agents "
            f"({', '.join(spawned)}) besides the {so_far} before, over the run's limit "
            f"of {limit}",
        )
    ]
