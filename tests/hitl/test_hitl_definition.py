"""A hitl node's config: validation, and rejection_path compiled into routing."""

from __future__ import annotations

from typing import Any

import pytest

from aob.projections.workflow.compiler import compile_workflow, decision_is
from aob.projections.workflow.definition import validate_definition
from aob.projections.workflow.expressions import is_truthy


def _doc(gate: dict[str, Any], edges: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": "review",
        "nodes": [
            {"id": "draft", "type": "noop"},
            {"id": "gate", "type": "hitl", **gate},
            {"id": "publish", "type": "noop"},
            {"id": "revise", "type": "noop"},
        ],
        "edges": edges
        if edges is not None
        else [{"from": "draft", "to": "gate"}, {"from": "gate", "to": "publish"}],
    }


def _problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in validate_definition(doc)]


def test_a_full_hitl_config_is_valid():
    config = {
        "message": "Publish {{ .nodes.draft.title }}?",
        "payload": {"title": "{{ .nodes.draft.title }}", "notes": ["by {{ .inputs.author }}"]},
        "approvers": ["alice"],
        "roles": ["editor"],
        "timeout_ms": 1000,
        "on_timeout": "fail",
        "rejection_path": ["revise"],
    }
    assert _problems(_doc({"config": config})) == []


def test_a_bare_hitl_node_is_valid():
    assert _problems(_doc({})) == []


@pytest.mark.parametrize(
    ("config", "path", "words"),
    [
        ({"on_timeout": "maybe"}, "/nodes/1/config/on_timeout", "is not one of"),
        ({"timeout_ms": 0}, "/nodes/1/config/timeout_ms", "less than the minimum"),
        ({"rejection_paths": ["revise"]}, "/nodes/1/config", "did you mean 'rejection_path'"),
        ({"approvers": "alice"}, "/nodes/1/config/approvers", "is not of type 'array'"),
        ({"rejection_path": [5]}, "/nodes/1/config/rejection_path/0", "is not of type"),
    ],
)
def test_config_schema_problems(config, path, words):
    problems = _problems(_doc({"config": config}))
    assert [p for p, _ in problems] == [path]
    assert words in problems[0][1]


def test_dangling_rejection_path_entry_is_reported_with_its_path():
    problems = _problems(_doc({"config": {"rejection_path": ["revise", "nowhere"]}}))
    assert problems == [
        ("/nodes/1/config/rejection_path/1", "rejection_path entry 'nowhere': no such node")
    ]


def test_rejection_path_back_upstream_is_a_cycle():
    problems = _problems(_doc({"config": {"rejection_path": ["draft"]}}))
    assert len(problems) == 1
    path, message = problems[0]
    assert path == "/nodes/1/config/rejection_path/0"
    assert "undeclared cycle" in message
    assert "loop edge" in message


def test_node_level_timeout_is_refused_on_hitl():
    problems = _problems(_doc({"timeout_ms": 500}))
    assert [p for p, _ in problems] == ["/nodes/1/timeout_ms"]
    assert "config.timeout_ms" in problems[0][1]


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"message": "Go {{ .nodes. }}?"}, "/nodes/1/config/message"),
        ({"message": "Go {{ }}?"}, "/nodes/1/config/message"),
        ({"payload": {"a": [1, "x {{ now }}"]}}, "/nodes/1/config/payload/a/1"),
    ],
)
def test_bad_placeholders_are_reported(config, path):
    problems = _problems(_doc({"config": config}))
    assert [p for p, _ in problems] == [path]
    assert "invalid jq expression" in problems[0][1]


def test_deep_payload_does_not_hit_the_recursion_limit():
    payload: Any = "{{ .inputs }}"
    for _ in range(900):
        payload = [payload]
    problems = _problems(_doc({"config": {"payload": payload}}))  # a problem, not a crash
    assert [message for _, message in problems] == [
        "nested too deeply: limit 64 (AOB_WORKFLOW_MAX_DEPTH)"
    ]


def _routes(ir, source: str) -> dict[str, str | None]:
    return {e.target: e.when for e in ir.outgoing[source]}


def test_rejection_path_compiles_to_reject_edges_and_dependents_to_approve_edges():
    ir = compile_workflow(_doc({"config": {"rejection_path": ["revise"]}}))
    routes = _routes(ir, "gate")
    assert routes == {
        "publish": decision_is("gate", "approve"),
        "revise": decision_is("gate", "reject"),
    }
    assert ir.incoming["revise"][0].source == "gate"
    approved = {"nodes": {"gate": {"decision": "approve"}}}
    rejected = {"nodes": {"gate": {"decision": "reject"}}}
    publish, revise = routes["publish"], routes["revise"]
    assert publish is not None
    assert revise is not None
    assert is_truthy(publish, approved)
    assert not is_truthy(publish, rejected)
    assert is_truthy(revise, rejected)
    assert not is_truthy(revise, approved)


def test_an_explicit_edge_to_a_rejection_target_becomes_its_reject_edge():
    edges = [
        {"from": "draft", "to": "gate"},
        {"from": "gate", "to": "publish", "when": ".inputs.go # a comment"},
        {"from": "gate", "to": "revise"},
    ]
    ir = compile_workflow(_doc({"config": {"rejection_path": ["revise"]}}, edges))
    routes = _routes(ir, "gate")
    assert list(routes) == ["publish", "revise"]  # no duplicate edge
    assert routes["revise"] == decision_is("gate", "reject")
    publish = routes["publish"]
    assert publish is not None
    context = {"inputs": {"go": True}, "nodes": {"gate": {"decision": "approve"}}}
    assert is_truthy(publish, context)
    assert not is_truthy(publish, {**context, "inputs": {"go": False}})
    assert not is_truthy(publish, {**context, "nodes": {"gate": {"decision": "reject"}}})


def test_without_rejection_path_dependents_still_need_an_approval():
    ir = compile_workflow(_doc({}))
    assert _routes(ir, "gate") == {"publish": decision_is("gate", "approve")}
    assert _routes(ir, "draft") == {"gate": None}
