"""The per-node-type config schemas: what they refuse and how they say it, their
agreement with the workers' own config models, and the reference page made from them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings

from aob.events.types import NodeSkipped
from aob.platform.settings import Settings
from aob.projections.workflow.definition import (
    check_definition,
    validate_definition,
    workflow_schema,
)
from aob.projections.workflow.node_types import node_type_names, node_type_schema
from aob.projections.workflow.reference import reference
from aob.workers.agent.config import _NodeConfig as AgentNodeConfig
from aob.workers.http.config import _NodeConfig as HttpNodeConfig
from aob.workers.http.settings import HttpWorkerSettings
from aob.workers.sandbox import SandboxSettings
from tests.coordinator.simulate import Simulation

ROOT = Path(__file__).parents[2]
KNOWN = ["agent", "hitl", "http", "noop", "transform"]


def one_node(node: dict[str, Any], *more: dict[str, Any], **doc: Any) -> dict[str, Any]:
    return {"name": "w", "nodes": [node, *more], **doc}


def checked(doc: dict[str, Any], **options: Any) -> tuple[list[str], list[str]]:
    result = check_definition(doc, known_types=KNOWN, **options)
    return [str(p) for p in result.problems], [str(w) for w in result.warnings]


# --- the schemas themselves -----------------------------------------------------------


def test_every_shipped_type_has_a_schema_with_its_output_documented() -> None:
    assert node_type_names() == KNOWN
    for name in KNOWN:
        schema = node_type_schema(name)
        assert schema is not None
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["description"], name
        assert schema["x-output"], name
        assert all("description" in field for field in schema["properties"].values()), name


@pytest.mark.parametrize("name", KNOWN)
def test_each_types_examples_are_valid_workflows(name: str) -> None:
    schema = node_type_schema(name)
    assert schema is not None
    assert schema["examples"]
    for example in schema["examples"]:
        doc = one_node({"id": "n", "type": name, "config": example})
        if name == "hitl":  # its example routes a rejection to a node of the workflow
            doc["nodes"].append({"id": "notify_refused", "type": "noop"})
        assert checked(doc) == ([], [])


def test_the_served_schema_carries_every_config_and_enforces_it() -> None:
    schema = workflow_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert {f"config.{name}" for name in KNOWN} <= set(schema["$defs"])
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(one_node({"id": "c", "type": "http", "config": {"url": "https://x"}}))
    assert not validator.is_valid(one_node({"id": "c", "type": "http", "config": {"uri": "x"}}))
    assert not validator.is_valid(one_node({"id": "c", "type": "http"}))


# --- agreement with the workers' config models -----------------------------------------

MODELS: list[tuple[str, type[BaseModel]]] = [("http", HttpNodeConfig), ("agent", AgentNodeConfig)]


@pytest.mark.parametrize(("name", "model"), MODELS)
def test_the_schema_names_the_fields_the_worker_reads(name: str, model: type[BaseModel]) -> None:
    schema = node_type_schema(name)
    assert schema is not None
    assert set(schema["properties"]) == set(model.model_fields)
    required = {field for field, info in model.model_fields.items() if info.is_required()}
    assert set(schema.get("required", [])) == required


# Configs without templates (the http worker renders those before its model sees them).
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "http": [
        {"url": "https://x"},
        {"url": "https://x", "method": "POST", "body": {"a": [1]}, "body_format": "json"},
        {"url": "https://x", "retries": 2, "timeout_ms": 50, "expect_status": [200, "4xx"]},
        {"url": "https://x", "retries": {"max": 1, "non_idempotent": True}},
        {"url": "https://x", "query": {"q": "a", "n": [1, 2], "none": None}},
        {"url": "https://x", "headers": {"X-Count": 5}, "secrets": ["github"]},
        {},
        {"url": "https://x", "retries": {"maxx": 1}},
        {"url": "https://x", "timeout_ms": 0},
        {"url": "https://x", "body_format": "xml"},
        {"url": "https://x", "follow_redirects": "sometimes"},
        {"url": "https://x", "query": {"q": {"nested": 1}}},
        {"url": "https://x", "colour": "red"},
    ],
    "agent": [
        {"prompt": "go"},
        {"prompt": "go", "tools": ["execute_pipeline"], "output": "json", "max_rounds": 0},
        {"prompt": "go", "endpoint": "local", "model": None, "max_retries": 10},
        {},
        {"prompt": ""},
        {"prompt": "go", "tools": ["browse"]},
        {"prompt": "go", "max_retries": 11},
        {"prompt": "go", "max_tokens": "many"},
        {"prompt": "go", "temperature": 0.2},
    ],
}


@pytest.mark.parametrize(
    ("name", "model", "config"),
    [(name, model, config) for name, model in MODELS for config in SAMPLES[name]],
)
def test_the_schema_and_the_worker_agree_on_a_config(
    name: str, model: type[BaseModel], config: dict[str, Any]
) -> None:
    try:
        model.model_validate(config)
        worker_accepts = True
    except ValidationError:
        worker_accepts = False
    problems, _ = checked(one_node({"id": "n", "type": name, "config": config}))
    assert (problems == []) == worker_accepts, problems


# --- what validation says -------------------------------------------------------------


def test_a_misspelled_type_is_a_warning_naming_the_type_meant() -> None:
    doc = one_node(
        {"id": "charge", "type": "htpp", "config": {"url": "https://pay"}},
        {"id": "receipt", "type": "noop"},
        edges=[{"from": "charge", "to": "receipt"}],
    )
    problems, warnings = checked(doc)
    assert problems == []
    assert len(warnings) == 1
    assert warnings[0].startswith("/nodes/0/type: unknown node type 'htpp' (did you mean 'http'?)")
    assert "AOB_UNKNOWN_NODE_TYPES=error" in warnings[0]
    assert validate_definition(doc) == []  # the coordinator runs it: skipped, with a warning


def test_unknown_types_refused_when_the_setting_says_error() -> None:
    doc = one_node({"id": "charge", "type": "htpp"})
    problems, warnings = checked(doc, unknown_types="error")
    assert warnings == []
    assert len(problems) == 1
    assert "(did you mean 'http'?)" in problems[0]
    assert "AOB_UNKNOWN_NODE_TYPES=error refuses it" in problems[0]


def test_a_type_far_from_every_known_one_gets_no_guess() -> None:
    _, warnings = checked(one_node({"id": "x", "type": "cobol"}))
    assert warnings == [
        "/nodes/0/type: unknown node type 'cobol': no worker runs it, so the node will be "
        "skipped and its dependents run (AOB_UNKNOWN_NODE_TYPES=error refuses such workflows)"
    ]


def test_a_bad_http_config_is_refused_with_each_path() -> None:
    config = {"url": "ftp://files", "timeout_ms": "soon", "expect_status": ["2xxx"]}
    problems, _ = checked(one_node({"id": "charge", "type": "http", "config": config}))
    assert problems == [
        "/nodes/0/config/expect_status/0: '2xxx' is not a status class like \"2xx\", a code "
        'like "404" or a {{ jq }} template',
        "/nodes/0/config/timeout_ms: 'soon' is not an integer >= 1 or a {{ jq }} template",
        "/nodes/0/config/url: 'ftp://files' is not an http:// or https:// URL or a {{ jq }} "
        "template",
    ]


def test_templates_stand_for_any_http_value() -> None:
    """The worker renders every string of the config before checking it."""
    config = {
        "url": "{{ .inputs.url }}",
        "timeout_ms": "{{ .inputs.t }}",
        "retries": {"max": "{{ .inputs.n }}"},
        "expect_status": ["{{ .inputs.ok }}", 201],
        "follow_redirects": "{{ false }}",
    }
    assert checked(one_node({"id": "c", "type": "http", "config": config})) == ([], [])


def test_an_http_node_without_config_is_told_what_it_needs() -> None:
    problems, _ = checked(one_node({"id": "c", "type": "http"}))
    assert problems == [
        "/nodes/0: 'config' is a required property: a node of type 'http' needs 'url' in its config"
    ]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"url": "https://x", "methd": "POST"},
            "/nodes/0/config: 'methd' was unexpected: did you mean 'method'?",
        ),
        (
            {"url": "https://x", "retries": {"maxx": 2}},
            "/nodes/0/config/retries: 'maxx' was unexpected: did you mean 'max'?",
        ),
        (
            {"url": "https://x", "retries": -1},
            "/nodes/0/config/retries: -1 is less than the minimum of 0",
        ),
    ],
)
def test_a_config_field_typo_gets_a_suggestion_and_an_alternative_only_its_cause(
    config: dict[str, Any], expected: str
) -> None:
    assert checked(one_node({"id": "n", "type": "http", "config": config}))[0] == [expected]


def test_an_unknown_field_far_from_any_lists_the_fields() -> None:
    problems, _ = checked(
        one_node({"id": "n", "type": "transform", "config": {"expr": ".", "x": 1}})
    )
    assert problems == ["/nodes/0/config: 'x' was unexpected: the fields are expr, all"]


def test_a_misspelled_nodes_is_one_problem_not_one_per_edge() -> None:
    edges = [{"from": f"n{i}", "to": f"n{i + 1}"} for i in range(7)]
    doc = {
        "name": "w",
        "nodez": [{"id": f"n{i}", "type": "noop"} for i in range(8)],
        "edges": edges,
    }
    problems, _ = checked(doc)
    assert problems == ["/: 'nodez' was unexpected: did you mean 'nodes'?"]


def test_a_node_without_its_id_is_one_problem_not_one_per_edge_to_it() -> None:
    doc = one_node(
        {"idd": "charge", "type": "noop"},
        {"id": "receipt", "type": "noop"},
        edges=[{"from": "charge", "to": "receipt"}, {"from": "receipt", "to": "charge"}],
    )
    assert checked(doc)[0] == ["/nodes/0: 'idd' was unexpected: did you mean 'id'?"]


def test_a_misspelled_node_key_hides_the_missing_one_it_explains() -> None:
    problems, _ = checked(one_node({"id": "a", "typ": "noop"}))
    assert problems == ["/nodes/0: 'typ' was unexpected: did you mean 'type'?"]


def test_an_edge_to_a_misspelled_node_names_the_node_meant() -> None:
    doc = one_node(
        {"id": "charge", "type": "noop"},
        {"id": "receipt", "type": "noop"},
        edges=[{"from": "chrage", "to": "receipt"}],
    )
    assert checked(doc)[0] == [
        "/edges/0/from: edge from 'chrage': no such node (did you mean 'charge'?)"
    ]


def test_the_coordinator_checks_only_the_configs_it_reads() -> None:
    """A worker's schema may change; a run recorded before must replay alike."""
    assert validate_definition(one_node({"id": "c", "type": "http", "config": {"x": 1}})) == []
    assert (
        validate_definition(
            one_node({"id": "t", "type": "transform", "config": {"expr": ".", "x": 1}})
        )
        == []
    )
    hitl = validate_definition(one_node({"id": "h", "type": "hitl", "config": {"x": 1}}))
    assert [str(p) for p in hitl] == [
        "/nodes/0/config: 'x' was unexpected: the fields are "
        "message, payload, approvers, roles, quorum, reject_quorum, allow_self_approval, "
        "timeout_ms, on_timeout, escalation, signals, rejection_path"
    ]


def test_the_coordinator_names_the_type_meant_when_it_skips() -> None:
    sim = Simulation(
        one_node(
            {"id": "charge", "type": "htpp"},
            {"id": "receipt", "type": "noop"},
            edges=[{"from": "charge", "to": "receipt"}],
        )
    )
    sim.run()
    skips = [e.payload for e in sim.log if isinstance(e.payload, NodeSkipped)]
    assert [(s.node_id, s.reason, s.warning) for s in skips] == [
        ("charge", "unknown node type 'htpp' (did you mean 'http'?)", True)
    ]
    assert sim.runs_of("receipt") == [(0, 1)]


# --- the reference page ---------------------------------------------------------------

PAGE = ROOT / "docs" / "reference" / "nodes.md"


def test_the_reference_page_is_the_generated_one() -> None:
    assert PAGE.read_text(encoding="utf-8") == reference(), (
        "regenerate: python -m aob.projections.workflow.reference > docs/reference/nodes.md"
    )


def test_the_generator_runs_as_documented() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aob.projections.workflow.reference"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert done.stdout == PAGE.read_text(encoding="utf-8")


def test_the_reference_documents_every_type_config_field_and_output() -> None:
    page = PAGE.read_text(encoding="utf-8")
    for name in KNOWN:
        schema = node_type_schema(name)
        assert schema is not None
        section = page.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert "### Config" in section
        assert "### Output" in section
        for field in schema["properties"]:
            assert f"| `{field}`" in section, (name, field)


def test_every_setting_the_reference_names_exists() -> None:
    classes: list[tuple[str, type[BaseSettings]]] = [
        ("AOB_JQ_", SandboxSettings),
        ("AOB_HTTP_", HttpWorkerSettings),
        ("AOB_", Settings),
    ]
    names = set(re.findall(r"AOB_[A-Z0-9_]*[A-Z0-9]\b(?!_\*)", PAGE.read_text(encoding="utf-8")))
    assert "AOB_UNKNOWN_NODE_TYPES" in names
    for variable in names:
        assert any(
            variable.startswith(prefix)
            and variable.removeprefix(prefix).lower() in cls.model_fields
            for prefix, cls in classes
        ), f"{variable} is documented but no setting reads it"


def test_the_readme_links_the_reference() -> None:
    assert "(docs/reference/nodes.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
