"""Compile a validated definition into the `WorkflowIR` the coordinator folds over."""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from aob.events.types import Json

from .definition import (
    DEFAULT_LIMITS,
    HITL_TYPE,
    InvalidDefinition,
    Limits,
    canonical_digest,
    placeholders,
    template_strings,
    validate_definition,
)
from .graph import Adjacency, reachable, reverse, stable_topological_order
from .ir import EdgeSpec, NodeSpec, RetryPolicy, WorkflowIR
from .simple_jq import Reads, node_reads

__all__ = ["InvalidDefinition", "compile_workflow", "decision_is"]


_COMPILED: OrderedDict[tuple[bytes, Limits], WorkflowIR] = OrderedDict()
_COMPILED_MAX = 512


def compile_workflow(doc: Json, limits: Limits = DEFAULT_LIMITS) -> WorkflowIR:
    """The IR of `doc`; raises InvalidDefinition listing every problem if it is invalid.

    The IR copies what it takes from `doc`, so later changes to `doc` (say, a patch
    applied in place) cannot leak into a running workflow. IRs are immutable and
    memoised by a digest of the document's canonical JSON: every run of a workflow re-validates
    the same definition otherwise, and schema validation dominates the fold's cost.
    """
    digest = canonical_digest(doc)
    if digest is None:
        return _compile(doc, limits)  # not JSON: validation reports it
    key = (digest, limits)
    ir = _COMPILED.get(key)
    if ir is None:
        ir = _COMPILED[key] = _compile(doc, limits)
        if len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    else:
        _COMPILED.move_to_end(key)
    return ir


def _compile(doc: Json, limits: Limits) -> WorkflowIR:
    problems = validate_definition(doc, limits)
    if problems:
        raise InvalidDefinition(problems)
    nodes = {spec.id: spec for spec in map(_node, doc["nodes"])}
    routed = _approval_routes(nodes, [_edge(e) for e in doc.get("edges", [])])
    edges = [replace(e, reads=None if e.when is None else node_reads(e.when)) for e in routed]
    forward = [e for e in edges if not e.is_loop]
    loops = tuple(e for e in edges if e.is_loop)
    incoming: dict[str, list[EdgeSpec]] = {n: [] for n in nodes}
    outgoing: dict[str, list[EdgeSpec]] = {n: [] for n in nodes}
    adjacency: dict[str, list[tuple[str, int]]] = {n: [] for n in nodes}
    for index, edge in enumerate(forward):
        incoming[edge.target].append(edge)
        outgoing[edge.source].append(edge)
        adjacency[edge.source].append((edge.target, index))
    backward = reverse(adjacency)
    return WorkflowIR(
        name=doc["name"],
        nodes=nodes,
        incoming={n: tuple(e) for n, e in incoming.items()},
        outgoing={n: tuple(e) for n, e in outgoing.items()},
        loops=loops,
        loop_bodies=tuple(_loop_body(loop, adjacency, backward) for loop in loops),
        order=tuple(stable_topological_order(list(nodes), adjacency)),
        output=doc.get("output"),
        output_reads=None if doc.get("output") is None else node_reads(doc["output"]),
    )


def _node(raw: Mapping[str, Any]) -> NodeSpec:
    timeout = raw.get("timeout_ms")
    config = copy.deepcopy(raw.get("config", {}))
    return NodeSpec(
        id=raw["id"],
        type=raw["type"],
        config=config,
        retry=_retry(raw.get("retry", {})),
        timeout_ms=None if timeout is None else int(timeout),
        join=raw.get("join", "all"),
        reads=_node_reads(raw["type"], config),
    )


def _node_reads(node_type: str, config: Any) -> Reads:
    """The outputs a node of `node_type` can see. Only the built-in types whose use of
    the context is known are narrowed: a transform reads through `expr`, http and hitl
    through their `{{ }}` templates; agents and custom workers get every output."""
    if node_type == "noop":
        return frozenset()
    if not isinstance(config, dict):
        return None
    if node_type == "transform":
        expr = config.get("expr")
        return node_reads(expr) if isinstance(expr, str) else None
    if node_type == "http":
        return _template_reads(config)
    if node_type == HITL_TYPE:
        return _template_reads([config.get("message"), config.get("payload")])
    return None


def _template_reads(templates: Json) -> Reads:
    found: set[str] = set()
    for _, text in template_strings(templates):
        for program in placeholders(text):
            reads = node_reads(program)
            if reads is None:
                return None
            found |= reads
    return frozenset(found)


def _retry(raw: Mapping[str, Any]) -> RetryPolicy:
    """Missing fields take RetryPolicy's defaults; JSON Schema's integers may be 3.0."""
    default = RetryPolicy()
    return RetryPolicy(
        max_attempts=int(raw.get("max_attempts", default.max_attempts)),
        initial_backoff_ms=int(raw.get("initial_backoff_ms", default.initial_backoff_ms)),
        multiplier=float(raw.get("multiplier", default.multiplier)),
        max_backoff_ms=int(raw.get("max_backoff_ms", default.max_backoff_ms)),
    )


def _edge(raw: Mapping[str, Any]) -> EdgeSpec:
    loop = raw.get("loop")
    return EdgeSpec(
        source=raw["from"],
        target=raw["to"],
        when=raw.get("when"),
        max_iterations=None if loop is None else int(loop["max_iterations"]),
        on_limit="continue" if loop is None else loop.get("on_limit", "continue"),
    )


def _loop_body(loop: EdgeSpec, forward: Adjacency, backward: Adjacency) -> frozenset[str]:
    """Nodes on a forward path from the loop's target to its source, both included."""
    return frozenset(reachable(loop.target, forward) & reachable(loop.source, backward))


# --- human approvals -------------------------------------------------------------------


def decision_is(node_id: str, decision: str) -> str:
    """jq: whether the approval node `node_id` output `decision` ("approve"/"reject")."""
    return f".nodes[{json.dumps(node_id)}].decision == {json.dumps(decision)}"


def _approval_routes(nodes: Mapping[str, NodeSpec], edges: Sequence[EdgeSpec]) -> list[EdgeSpec]:
    """Route on each hitl node's decision: its rejection_path nodes on reject, its
    other forward edges on approve.

    The decision becomes an edge condition (ANDed with the edge's own), so the
    coordinator's conditional edges and dead-path elimination do the rest. Loop
    edges keep their own conditions.
    """
    rejection = {
        spec.id: list(spec.config.get("rejection_path", []))
        for spec in nodes.values()
        if spec.type == HITL_TYPE
    }
    routed: list[EdgeSpec] = []
    for edge in edges:
        if edge.is_loop or edge.source not in rejection:
            routed.append(edge)
            continue
        decision = "reject" if edge.target in rejection[edge.source] else "approve"
        routed.append(replace(edge, when=_both(decision_is(edge.source, decision), edge.when)))
    explicit = {(e.source, e.target) for e in edges if not e.is_loop}
    for source, targets in rejection.items():
        for target in targets:
            if (source, target) not in explicit:
                routed.append(EdgeSpec(source, target, decision_is(source, "reject")))
    return routed


def _both(condition: str, when: str | None) -> str:
    """`condition and when`; newlines keep a `#` comment in `when` from eating the ")"."""
    return condition if when is None else f"({condition}) and (\n{when}\n)"
