"""Compiling definitions to the IR the coordinator folds over."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from aob.projections.workflow.compiler import InvalidDefinition, compile_workflow
from aob.projections.workflow.definition import Limits, canonical_digest
from aob.projections.workflow.ir import EdgeSpec, NodeSpec, RetryPolicy


def agent(node_id, **extra):
    return {"id": node_id, "type": "agent", **extra}


def workflow(nodes, edges=(), **extra):
    return {"name": "w", "nodes": list(nodes), "edges": list(edges), **extra}


def edge(source, target, **extra):
    return {"from": source, "to": target, **extra}


def test_node_specs_take_defaults_and_copy_config():
    config: dict[str, Any] = {"expr": ".inputs", "nested": {"k": [1]}}
    doc = workflow(
        [
            {"id": "t", "type": "transform", "config": config},
            agent("a", retry={"max_attempts": 3.0, "multiplier": 3}, timeout_ms=500, join="any"),
        ]
    )
    ir = compile_workflow(doc)
    # `.inputs` reads no node output: the transform's tasks carry none.
    assert ir.nodes["t"] == NodeSpec("t", "transform", config, reads=frozenset())
    assert ir.nodes["a"] == NodeSpec(
        "a", "agent", {}, RetryPolicy(max_attempts=3, multiplier=3.0), 500, "any"
    )
    assert isinstance(ir.nodes["a"].retry.max_attempts, int)
    config["nested"]["k"].append(2)
    assert ir.nodes["t"].config["nested"] == {"k": [1]}


def test_what_each_node_edge_and_output_reads_of_the_run():
    doc = workflow(
        [
            {"id": "a", "type": "transform", "config": {"expr": ".inputs.x"}},
            {"id": "b", "type": "transform", "config": {"expr": ".nodes.a * 2"}},
            {
                "id": "h",
                "type": "hitl",
                "config": {"message": "ok {{ .nodes.b }}?", "payload": {"x": "{{ .nodes.a }}"}},
            },
            {
                "id": "w",
                "type": "http",
                "config": {"url": "https://example.com/{{ .nodes.b | tostring }}"},
            },
            {"id": "n", "type": "noop"},
            agent("g"),
            {"id": "c", "type": "custom"},
            {"id": "t", "type": "transform", "config": {"expr": ".nodes | length"}},
        ],
        [{"from": "a", "to": "b", "when": ".nodes.a > 1"}],
    )
    doc["output"] = "{b: .nodes.b, h: .nodes.h.decision}"
    ir = compile_workflow(doc)
    reads = {node_id: spec.reads for node_id, spec in ir.nodes.items()}
    assert reads == {
        "a": frozenset(),
        "b": {"a"},
        "h": {"a", "b"},
        "n": frozenset(),
        "g": None,
        "c": None,
        "t": None,
        "w": None,  # `| tostring` is not simple: any output
    }
    assert ir.outgoing["a"][0].reads == frozenset({"a"})
    assert ir.output_reads == frozenset({"b", "h"})


def test_roots_sinks_and_edge_indexes_use_forward_edges_only():
    doc = workflow(
        [agent("a"), agent("b"), agent("c"), agent("d")],
        [
            edge("a", "b"),
            edge("a", "c", when=".x"),
            edge("b", "d"),
            edge("c", "d"),
            edge("d", "a", loop={"max_iterations": 2}),
        ],
    )
    ir = compile_workflow(doc)
    assert ir.roots == ("a",)
    assert ir.sinks == ("d",)
    assert ir.incoming["d"] == (EdgeSpec("b", "d"), EdgeSpec("c", "d"))
    assert ir.outgoing["a"] == (
        EdgeSpec("a", "b"),
        EdgeSpec("a", "c", when=".x", reads=frozenset()),
    )
    assert ir.incoming["a"] == ()
    assert ir.outgoing["d"] == ()
    assert ir.loops == (EdgeSpec("d", "a", max_iterations=2),)
    assert ir.loops[0].is_loop


def test_loop_body_is_the_nodes_between_target_and_source():
    doc = workflow(
        [agent(n) for n in ("start", "draft", "review", "side", "publish")],
        [
            edge("start", "draft"),
            edge("draft", "review"),
            edge("draft", "side"),
            edge("review", "publish"),
            edge("review", "draft", loop={"max_iterations": 3}, when=".nodes.review.again"),
        ],
    )
    ir = compile_workflow(doc)
    assert ir.loop_bodies == (frozenset({"draft", "review"}),)


def test_self_loop_body_is_the_node_itself():
    ir = compile_workflow(workflow([agent("a")], [edge("a", "a", loop={"max_iterations": 2})]))
    assert ir.loop_bodies == (frozenset({"a"}),)
    assert ir.roots == ("a",)
    assert ir.sinks == ("a",)


def test_nested_loops_each_get_their_body():
    doc = workflow(
        [agent(n) for n in "abcd"],
        [
            edge("a", "b"),
            edge("b", "c"),
            edge("c", "d"),
            edge("c", "b", loop={"max_iterations": 2}),
            edge("d", "a", loop={"max_iterations": 2}),
        ],
    )
    ir = compile_workflow(doc)
    assert ir.loop_bodies == (frozenset("bc"), frozenset("abcd"))


def test_order_is_topological_and_stable_by_declaration():
    doc = workflow(
        [agent(n) for n in ("z", "y", "x", "w")],
        [edge("x", "z"), edge("w", "y")],
    )
    # x and w must precede z and y; ties are broken by declaration order.
    assert compile_workflow(doc).order == ("x", "z", "w", "y")


def test_independent_nodes_keep_declaration_order():
    doc = workflow([agent(n) for n in ("c", "a", "b")])
    ir = compile_workflow(doc)
    assert ir.order == ("c", "a", "b")
    assert ir.roots == ir.sinks == ("c", "a", "b")


def test_name_and_output():
    ir = compile_workflow(workflow([agent("a")], output=".nodes.a"))
    assert ir.name == "w"
    assert ir.output == ".nodes.a"
    assert compile_workflow(workflow([agent("a")])).output is None


def test_invalid_definition_raises_with_every_problem():
    doc = workflow([agent("a"), agent("a")], [edge("a", "ghost")])
    with pytest.raises(InvalidDefinition) as caught:
        compile_workflow(doc)
    assert [p.path for p in caught.value.problems] == ["/nodes/1/id", "/edges/0/to"]
    assert "duplicate node id" in str(caught.value)


def test_compiling_does_not_change_the_document():
    doc = workflow([agent("a"), agent("b")], [edge("a", "b")])
    snapshot = copy.deepcopy(doc)
    compile_workflow(doc)
    assert doc == snapshot


# --- memoised by the document's canonical JSON ------------------------------------------


def test_equal_documents_share_one_compiled_ir_and_a_change_compiles_anew():
    doc = workflow([agent("a", config={"x": 1, "y": [1, None]})])
    reordered = {key: doc[key] for key in reversed(list(doc))}
    assert compile_workflow(doc) is compile_workflow(reordered)
    changed = copy.deepcopy(doc)
    changed["nodes"][0]["config"]["x"] = 2
    assert compile_workflow(changed).nodes["a"].config == {"x": 2, "y": [1, None]}


def test_a_document_is_held_to_the_limits_it_is_compiled_under_not_those_of_a_twin():
    doc = workflow([agent("a"), agent("b")])
    compile_workflow(doc)
    with pytest.raises(InvalidDefinition, match="AOB_WORKFLOW_MAX_NODES"):
        compile_workflow(doc, Limits(max_nodes=1))


def test_a_nan_is_never_served_the_ir_of_its_null_twin():
    # orjson writes NaN as null: a digest taken from its text alone would be shared.
    compile_workflow(workflow([agent("a", config={"x": None})]))
    with pytest.raises(InvalidDefinition):
        compile_workflow(workflow([agent("a", config={"x": float("nan")})]))


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ({"a": 1, "b": [None, 2]}, {"b": [None, 2], "a": 1}, True),
        ({"a": None}, {"a": float("nan")}, False),
        ({"a": 2**70}, {"a": 2**70}, True),  # past 64 bits: the standard library's way
        ({"a": 2**70}, {"a": 2**70 + 1}, False),
        ({"é": "ü"}, {"é": "u"}, False),
    ],
)
def test_canonical_digest_tells_documents_apart_by_value_not_key_order(one, other, same):
    assert (canonical_digest(one) == canonical_digest(other)) is same


def test_canonical_digest_is_none_for_what_is_not_json():
    assert canonical_digest({"a": {1, 2}}) is None
