"""Regexes in tenants' JSON Schemas (a composite tool's `parameters`, an OpenAPI
document's parameter and body schemas) run on RE2: `pattern` and `patternProperties`
(also where `additionalProperties` consults them) never reach Python's backtracking
`re`, and a pattern RE2 cannot compile is refused when the tool is registered."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import jsonschema._keywords
import jsonschema._utils
import pytest

from aob.workers.agent.openapi import ArgumentError, build_request
from aob.workers.agent.schemas import SchemaRefused, check_schema, problems
from tests.agent.harness import Aob

EVIL = "(a+)+$"  # Python's re tries 2^n ways on "a" * n + "!"
HOSTILE = "a" * 100_000 + "!"


class BacktrackingUsed(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_backtracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """jsonschema's keywords reach `re` through their modules' `re`: any matching there
    fails the test (a proxy for the exponential time it would take on EVIL)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise BacktrackingUsed(f"Python's re matched a tenant pattern: {args[:1]!r}")

    guard = SimpleNamespace(
        **{name: getattr(re, name) for name in dir(re) if not name.startswith("__")}
    )
    for name in ("search", "match", "fullmatch", "findall", "finditer", "compile", "sub"):
        setattr(guard, name, refuse)
    monkeypatch.setattr(jsonschema._keywords, "re", guard)
    monkeypatch.setattr(jsonschema._utils, "re", guard)


def test_a_backtracking_pattern_is_matched_in_linear_time() -> None:
    schema = {"type": "string", "pattern": EVIL}
    [problem] = problems(schema, HOSTILE)
    assert problem.startswith("(input): 'aaaa")
    assert "does not match '(a+)+$'" in problem
    assert problems(schema, "aaaa") == []


def test_pattern_properties_and_additional_properties_use_re2() -> None:
    schema = {
        "type": "object",
        "patternProperties": {"^x-": {"type": "integer"}, EVIL: {"type": "string"}},
        "additionalProperties": False,
    }
    assert problems(schema, {"x-1": 1, "aaa": "s"}) == []
    assert problems(schema, {"x-1": "one"}) == ["x-1: 'one' is not of type 'integer'"]
    [extra] = problems(schema, {HOSTILE: 1, "x-2": 2})
    assert extra.startswith("(input): Additional properties are not allowed ('aaaa")
    assert problems({"propertyNames": {"pattern": EVIL}}, {HOSTILE: 1})  # via pattern


def test_re2_syntax_is_what_registration_and_validation_understand() -> None:
    """`\\p{L}` is RE2 (Python's re has no such class): accepted, and it matches."""
    schema = {"type": "string", "pattern": r"^\p{L}+$"}
    check_schema(schema, "spec.parameters")
    assert problems(schema, "héllo") == []
    assert problems(schema, "h3llo")


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "string", "pattern": r"(a+)\1"}, "/pattern: pattern '(a+)\\\\1'"),
        ({"properties": {"k": {"pattern": "(?=x)y"}}}, "/properties/k/pattern"),
        ({"patternProperties": {"(?<!a)b": {}}}, "/patternProperties/(?<!a)b"),
    ],
)
def test_a_pattern_re2_cannot_run_is_refused(schema: dict[str, Any], named: str) -> None:
    with pytest.raises(SchemaRefused) as refused:
        check_schema(schema, "spec.parameters")
    message = str(refused.value)
    assert message.startswith("spec.parameters" + named.split(":")[0]), message
    assert "RE2" in message, message


def test_unevaluated_properties_beside_pattern_properties_is_refused() -> None:
    """jsonschema evaluates that combination with `re`: refused at registration, and a
    problem (not a match with `re`) for a schema stored before."""
    schema = {"patternProperties": {EVIL: {}}, "unevaluatedProperties": False}
    with pytest.raises(SchemaRefused, match="unevaluatedProperties beside patternProperties"):
        check_schema(schema, "spec.parameters")
    [problem] = problems(schema, {HOSTILE: 1})
    assert "unevaluatedProperties beside patternProperties" in problem
    # A "pattern" inside data (a default, an example) is no regex.
    check_schema({"default": {"pattern": "(a"}, "examples": [{"pattern": r"\1"}]}, "p")


def test_openapi_arguments_are_checked_on_re2() -> None:
    document = {
        "openapi": "3.0.0",
        "paths": {
            "/x": {
                "post": {
                    "operationId": "send",
                    "parameters": [{"name": "q", "in": "query", "schema": {"pattern": EVIL}}],
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Body"}}
                        }
                    },
                }
            }
        },
        "components": {
            "schemas": {
                "Body": {
                    "type": "object",
                    "properties": {"code": {"type": "string", "pattern": EVIL}},
                }
            }
        },
    }
    spec = {"document": document, "base_url": "http://api.test"}
    with pytest.raises(ArgumentError) as refused:
        build_request(spec, "send", {"q": HOSTILE, "body": {"code": HOSTILE}})
    assert "q: 'aaaa" in str(refused.value)
    assert "body['code']: 'aaaa" in str(refused.value)
    assert build_request(spec, "send", {"q": "aa", "body": {"code": "a"}})["url"] == (
        "http://api.test/x"
    )


async def test_registration_refuses_an_unusable_pattern_with_a_4xx(aob: Aob) -> None:
    tool = {
        "name": "coded",
        "steps": [{"op": "top_k", "k": 1}],
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "pattern": r"^(\d)\1$"}},
        },
    }
    refused = await aob.client.post("/api/v1/tools", json=tool)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    detail = refused.json()["detail"]
    assert detail.startswith("spec.parameters/properties/code/pattern:"), detail
    assert "RE2" in detail, detail
    assert "backreferences" in detail, detail

    document = {
        "openapi": "3.0.0",
        "servers": [{"url": "http://api.test"}],
        "paths": {
            "/x": {
                "get": {
                    "operationId": "get",
                    "parameters": [{"name": "q", "in": "query", "schema": {"pattern": "(?=a)"}}],
                }
            }
        },
    }
    refused = await aob.client.post(
        "/api/v1/tools/openapi", json={"name": "api", "document": document}
    )
    assert refused.status_code == 422, refused.text
    assert "spec.document/paths/~1x/get/parameters/0/schema/pattern" in refused.json()["detail"]

    fine = {**tool, "parameters": {"type": "string", "pattern": EVIL}}
    assert (await aob.client.post("/api/v1/tools", json=fine)).status_code == 201
