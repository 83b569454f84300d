"""Loading (JSON, YAML) and validation: every rule, with the path it reports."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aob.projections.workflow.definition import (
    DefinitionError,
    Limits,
    Problem,
    load_definition,
    validate_definition,
    workflow_schema,
)

VALID: dict[str, Any] = {
    "name": "enrich",
    "description": "double, then score",
    "output": ".nodes.score",
    "nodes": [
        {"id": "fetch", "type": "transform", "config": {"expr": ".inputs.items | map(. * 2)"}},
        {"id": "check", "type": "agent", "retry": {"max_attempts": 3}, "timeout_ms": 30000},
        {"id": "score", "type": "http", "config": {"url": "https://x"}, "join": "any"},
    ],
    "edges": [
        {"from": "fetch", "to": "check"},
        {"from": "check", "to": "score", "when": ".nodes.fetch | length > 0"},
        {"from": "check", "to": "fetch", "loop": {"max_iterations": 3}, "when": ".again"},
    ],
}

YAML = """
name: enrich
description: double, then score
output: '.nodes.score'
nodes:
  - id: fetch
    type: transform
    config: {expr: '.inputs.items | map(. * 2)'}
  - {id: check, type: agent, retry: {max_attempts: 3}, timeout_ms: 30000}
  - id: score
    type: http
    config: {url: 'https://x'}
    join: any
edges:
  - {from: fetch, to: check}
  - {from: check, to: score, when: '.nodes.fetch | length > 0'}
  - {from: check, to: fetch, loop: {max_iterations: 3}, when: '.again'}
"""


def doc_with(**changes):
    """A copy of VALID with top-level keys replaced (None removes the key)."""
    doc = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    return doc


def paths(problems):
    return [p.path for p in problems]


# --- loading -------------------------------------------------------------------------


def test_json_and_yaml_load_to_the_same_document():
    assert load_definition(json.dumps(VALID), format="json") == VALID
    assert load_definition(YAML, format="yaml") == VALID


def test_format_is_detected_when_not_given():
    assert load_definition(json.dumps(VALID)) == VALID
    assert load_definition(YAML) == VALID


def test_json_syntax_error_has_line_and_column():
    with pytest.raises(DefinitionError) as caught:
        load_definition('{\n  "name": "x",\n  "nodes": [\n}', format="json")
    assert caught.value.line == 4
    assert caught.value.column == 1
    assert "line 4" in str(caught.value)


def test_yaml_syntax_error_has_line_and_column():
    with pytest.raises(DefinitionError) as caught:
        load_definition("name: x\nnodes:\n  - id: a\n   type: [t\n", format="yaml")
    assert caught.value.line is not None
    assert caught.value.line >= 4
    assert f"line {caught.value.line}" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "fmt"),
    [('{"name": "a", "name": "b"}', "json"), ("name: a\nname: b\n", "yaml")],
)
def test_duplicate_keys_are_refused(text, fmt):
    with pytest.raises(DefinitionError, match="duplicate key 'name'"):
        load_definition(text, format=fmt)


def test_yaml_duplicate_key_reports_its_line():
    with pytest.raises(DefinitionError) as caught:
        load_definition("name: a\nnodes: []\nname: b\n", format="yaml")
    assert caught.value.line == 3


def test_yaml_dates_stay_strings():
    assert load_definition("name: x\ndescription: 2024-01-01\n")["description"] == "2024-01-01"


@pytest.mark.parametrize(
    ("text", "fmt", "match"),
    [
        ("x: !!binary aGVsbG8=", "yaml", "not JSON"),
        ("x: !!set {a: null}", "yaml", "not JSON"),
        ("x: .inf", "yaml", "not a JSON number"),
        ("1: x", "yaml", "not a string"),
        ('{"x": NaN}', "json", "not a JSON number"),
        ('{"x": 1e400}', "json", "not a JSON number"),
    ],
)
def test_non_json_values_are_refused(text, fmt, match):
    with pytest.raises(DefinitionError, match=match):
        load_definition(text, format=fmt)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "", "just text", "[1]"])
def test_top_level_must_be_an_object(text):
    with pytest.raises(DefinitionError, match="must be an object"):
        load_definition(text)


def test_yaml_alias_bomb_is_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(DefinitionError, match="aliases"):
        load_definition("\n".join(lines))


def test_recursive_yaml_is_refused():
    with pytest.raises(DefinitionError):
        load_definition("a: &x [*x]")


def test_yaml_aliases_are_unshared_copies():
    doc = load_definition("base: &b {k: 1}\nother: *b\n")
    assert doc["base"] == doc["other"]
    assert doc["base"] is not doc["other"]


# --- the schema ----------------------------------------------------------------------


def test_the_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(workflow_schema())


def test_workflow_schema_returns_a_copy():
    workflow_schema()["title"] = "changed"
    assert workflow_schema()["title"] != "changed"


# --- validation ----------------------------------------------------------------------


def test_a_valid_definition_has_no_problems():
    assert validate_definition(VALID) == []


def test_edges_are_optional():
    assert validate_definition({"name": "one", "nodes": [{"id": "a", "type": "agent"}]}) == []


@pytest.mark.parametrize(
    ("doc", "path", "words"),
    [
        (doc_with(name=None), "", "'name' is a required property"),
        (doc_with(nodes=[]), "/nodes", "should be non-empty"),
        (doc_with(extra=1), "", "'extra' was unexpected"),
        (doc_with(name="bad name"), "/name", "Workflow name"),
        (doc_with(name="trailing\n"), "/name", "Workflow name"),
        (doc_with(output=""), "/output", "should be non-empty"),
    ],
)
def test_schema_problems_at_top_level(doc, path, words):
    problems = validate_definition(doc)
    assert path in paths(problems)
    assert any(words in p.message for p in problems if p.path == path)


@pytest.mark.parametrize(
    ("node", "path", "words"),
    [
        ({"type": "agent"}, "/nodes/1", "'id' is a required property"),
        ({"id": "x y", "type": "agent"}, "/nodes/1/id", "Node identifier"),
        ({"id": "n", "type": "agent", "colour": "red"}, "/nodes/1", "'colour' was unexpected"),
        ({"id": "n", "type": "agent", "config": []}, "/nodes/1/config", "not of type 'object'"),
        ({"id": "n", "type": "agent", "join": "some"}, "/nodes/1/join", "is not one of"),
        ({"id": "n", "type": "agent", "timeout_ms": 0}, "/nodes/1/timeout_ms", "minimum"),
        ({"id": "n", "type": "agent", "timeout_ms": True}, "/nodes/1/timeout_ms", "integer"),
        ({"id": "n", "type": "agent", "retry": {"tries": 2}}, "/nodes/1/retry", "unexpected"),
        (
            {"id": "n", "type": "agent", "retry": {"max_attempts": 0}},
            "/nodes/1/retry/max_attempts",
            "minimum",
        ),
        ({"id": "n", "type": "transform"}, "/nodes/1", "'config' is a required property"),
        ({"id": "n", "type": "transform", "config": {}}, "/nodes/1/config", "'expr'"),
    ],
)
def test_schema_problems_in_nodes(node, path, words):
    doc = doc_with(nodes=[VALID["nodes"][0], node, *VALID["nodes"][1:]])
    problems = validate_definition(doc)
    assert any(p.path == path and words in p.message for p in problems), problems


@pytest.mark.parametrize(
    ("edge", "path", "words"),
    [
        ({"from": "fetch"}, "/edges/3", "'to' is a required property"),
        ({"from": "fetch", "to": "score", "if": "x"}, "/edges/3", "'if' was unexpected"),
        (
            {"from": "score", "to": "fetch", "loop": {"max_iterations": 0}},
            "/edges/3/loop/max_iterations",
            "minimum",
        ),
        ({"from": "score", "to": "fetch", "loop": {}}, "/edges/3/loop", "'max_iterations'"),
    ],
)
def test_schema_problems_in_edges(edge, path, words):
    problems = validate_definition(doc_with(edges=[*VALID["edges"], edge]))
    assert any(p.path == path and words in p.message for p in problems), problems


def test_schema_problems_are_sorted_numerically_by_path():
    nodes = [{"id": f"n{i}", "type": "agent", "join": "bad"} for i in range(12)]
    problems = validate_definition({"name": "w", "nodes": nodes})
    assert paths(problems) == [f"/nodes/{i}/join" for i in range(12)]


def test_duplicate_node_ids():
    nodes = [*VALID["nodes"], {"id": "check", "type": "agent"}]
    assert validate_definition(doc_with(nodes=nodes)) == [
        Problem("/nodes/3/id", "duplicate node id 'check' (first declared at /nodes/1)")
    ]


def test_edges_to_and_from_unknown_nodes():
    edges = [*VALID["edges"], {"from": "ghost", "to": "spirit"}]
    assert paths(validate_definition(doc_with(edges=edges))) == ["/edges/3/from", "/edges/3/to"]


def test_undeclared_cycle_names_its_nodes_and_closing_edge():
    edges = [*VALID["edges"], {"from": "score", "to": "check"}]
    problems = validate_definition(doc_with(edges=edges))
    assert paths(problems) == ["/edges/3"]
    assert "undeclared cycle check -> score -> check" in problems[0].message


def test_undeclared_self_loop():
    edges = [{"from": "fetch", "to": "fetch"}]
    problems = validate_definition(doc_with(edges=edges))
    assert paths(problems) == ["/edges/0"]
    assert "undeclared cycle fetch -> fetch" in problems[0].message


def test_each_separate_cycle_is_reported():
    nodes = [{"id": n, "type": "agent"} for n in "abcd"]
    edges = [
        {"from": "a", "to": "b"},
        {"from": "b", "to": "a"},
        {"from": "c", "to": "d"},
        {"from": "d", "to": "c"},
    ]
    problems = validate_definition({"name": "w", "nodes": nodes, "edges": edges})
    assert paths(problems) == ["/edges/1", "/edges/3"]


def test_a_long_chain_does_not_hit_the_recursion_limit():
    nodes = [{"id": f"n{i}", "type": "agent"} for i in range(500)]
    edges = [{"from": f"n{i}", "to": f"n{i + 1}"} for i in range(499)]
    edges.append({"from": "n499", "to": "n0"})
    problems = validate_definition({"name": "w", "nodes": nodes, "edges": edges})
    assert paths(problems) == ["/edges/499"]


def test_loop_edge_whose_target_does_not_reach_its_source():
    edges = [*VALID["edges"], {"from": "fetch", "to": "score", "loop": {"max_iterations": 2}}]
    problems = validate_definition(doc_with(edges=edges))
    assert paths(problems) == ["/edges/3"]
    assert "does not reach 'fetch'" in problems[0].message


def test_declared_self_loop_is_valid():
    edges = [{"from": "fetch", "to": "fetch", "loop": {"max_iterations": 2}}]
    assert validate_definition(doc_with(edges=edges)) == []


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"output": ".nodes |"}, "/output"),
        ({"output": "now"}, "/output"),
    ],
)
def test_jq_problems_in_output(change, path):
    problems = validate_definition(doc_with(**change))
    assert paths(problems) == [path]
    assert problems[0].message.startswith("invalid jq expression")


def test_jq_problem_in_edge_condition():
    edges = copy.deepcopy(VALID["edges"])
    edges[1]["when"] = ".nodes.fetch | length >"
    problems = validate_definition(doc_with(edges=edges))
    assert paths(problems) == ["/edges/1/when"]
    assert "syntax error" in problems[0].message


def test_jq_problem_in_transform_expr():
    nodes = copy.deepcopy(VALID["nodes"])
    nodes[0]["config"]["expr"] = "map(. * 2"
    assert paths(validate_definition(doc_with(nodes=nodes))) == ["/nodes/0/config/expr"]


def test_expr_of_other_node_types_is_not_jq():
    nodes = copy.deepcopy(VALID["nodes"])
    nodes[1]["config"] = {"expr": "not jq |"}
    assert validate_definition(doc_with(nodes=nodes)) == []


def test_node_and_edge_count_limits():
    limits = Limits(max_nodes=2, max_edges=1)
    problems = validate_definition(VALID, limits)
    assert problems == [
        Problem("/nodes", "too many nodes: 3 > limit 2 (AOB_WORKFLOW_MAX_NODES)"),
        Problem("/edges", "too many edges: 3 > limit 1 (AOB_WORKFLOW_MAX_EDGES)"),
    ]


def test_document_size_limit():
    doc = doc_with(description="x" * 2000)
    problems = validate_definition(doc, Limits(max_document_bytes=1000))
    assert paths(problems) == [""]
    assert "document too large" in problems[0].message
    assert validate_definition(doc, Limits(max_document_bytes=4000)) == []


def test_every_problem_is_reported_at_once():
    doc = {
        "name": "w",
        "output": "][",
        "nodes": [{"id": "a", "type": "agent"}, {"id": "a", "type": "agent", "x": 1}],
        "edges": [{"from": "a", "to": "b"}, {"from": "a", "to": "a"}],
    }
    assert paths(validate_definition(doc)) == [
        "/nodes/1",
        "/nodes/1/id",
        "/edges/0/to",
        "/edges/1",
        "/output",
    ]


def test_non_json_documents_are_a_problem_not_an_exception():
    assert paths(validate_definition({"name": {1, 2}})) == [""]


# --- garbage in, problems out ----------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
ids = st.sampled_from(["a", "b", "c", "d", "bad id", ""]) | json_values
jq_text = st.sampled_from([".", ".a |", "now", ".nodes.a", "  "]) | json_values
nodes = st.fixed_dictionaries(
    {"id": ids, "type": st.sampled_from(["agent", "transform", "x"]) | json_values},
    optional={
        "config": st.fixed_dictionaries({}, optional={"expr": jq_text}) | json_values,
        "retry": json_values,
        "join": st.sampled_from(["all", "any"]) | json_values,
        "timeout_ms": json_values,
    },
)
edges = st.fixed_dictionaries(
    {"from": ids, "to": ids},
    optional={
        "when": jq_text,
        "loop": st.fixed_dictionaries({"max_iterations": st.integers(-1, 3)}) | json_values,
    },
)
near_definitions = st.fixed_dictionaries(
    {"name": st.text(max_size=5) | json_values},
    optional={
        "nodes": st.lists(nodes | json_values, max_size=6),
        "edges": st.lists(edges | json_values, max_size=8),
        "output": jq_text,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | near_definitions)
def test_any_json_gets_problems_never_an_exception(doc):
    snapshot = copy.deepcopy(doc)
    problems = validate_definition(doc)
    assert all(isinstance(p, Problem) for p in problems)
    assert all(p.path == "" or p.path.startswith("/") for p in problems)
    assert doc == snapshot
    if not isinstance(doc, dict):
        assert problems


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_any_text_loads_or_raises_definition_error(text):
    try:
        doc = load_definition(text)
    except DefinitionError:
        return
    assert isinstance(doc, dict)
