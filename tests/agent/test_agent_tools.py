"""The tools that reach outside the run: HTTP through the guard, registered composite
tools and OpenAPI documents, and delegation to another agent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.agent.harness import Aob, agent, call, node, serving_app
from tests.fixtures.llm import LlmServer

PETS = [
    {"id": 1, "name": "Rex", "kind": "dog"},
    {"id": 2, "name": "Tom", "kind": "cat"},
    {"id": 3, "name": "Fido", "kind": "dog"},
]


@pytest.fixture
async def pet_api() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A small JSON API on loopback; yields its URL and the requests it received."""
    received: list[dict[str, Any]] = []

    async def pets(request: Request) -> JSONResponse:
        received.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": dict(request.query_params),
            }
        )
        if request.method == "POST":
            body = await request.json()
            received[-1]["body"] = body
            return JSONResponse({"id": 4, **body}, status_code=201)
        kind = request.query_params.get("kind")
        return JSONResponse([p for p in PETS if kind is None or p["kind"] == kind])

    async def pet(request: Request) -> JSONResponse:
        received.append({"method": request.method, "path": request.url.path})
        found = [p for p in PETS if p["id"] == int(request.path_params["pet_id"])]
        return JSONResponse(
            found[0] if found else {"error": "no pet"}, status_code=200 if found else 404
        )

    app = Starlette(
        routes=[Route("/pets", pets, methods=["GET", "POST"]), Route("/pets/{pet_id}", pet)]
    )
    async with serving_app(app) as url:
        yield url, received


def petstore(base_url: str) -> dict[str, Any]:
    return {
        "name": "petstore",
        "description": "Pets for sale",
        "base_url": base_url,
        "document": {
            "openapi": "3.0.3",
            "info": {"title": "Pets", "version": "1"},
            "paths": {
                "/pets": {
                    "get": {
                        "operationId": "listPets",
                        "summary": "List pets by kind",
                        "parameters": [
                            {
                                "name": "kind",
                                "in": "query",
                                "schema": {"type": "string", "enum": ["dog", "cat"]},
                            }
                        ],
                    },
                    "post": {
                        "operationId": "addPet",
                        "summary": "Add a pet",
                        "requestBody": {
                            "required": True,
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}
                            },
                        },
                    },
                },
                "/pets/{pet_id}": {
                    "parameters": [
                        {
                            "name": "pet_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "get": {"operationId": "getPet", "summary": "One pet"},
                },
            },
            "components": {
                "schemas": {
                    "Pet": {
                        "type": "object",
                        "required": ["name", "kind"],
                        "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                    }
                }
            },
        },
    }


def single(prompt: str) -> dict[str, Any]:
    return {"name": "tooling", "nodes": [agent("work", prompt)], "output": ".nodes.work.answer"}


async def test_http_request_goes_through_the_guard(aob: Aob, scripted_llm: LlmServer, pet_api):
    url, received = pet_api
    scripted_llm.serve(
        {
            "match": "count the dogs",
            "turns": [
                {
                    "tool_calls": [
                        call(
                            "execute_pipeline",
                            steps=[
                                {
                                    "op": "http_request",
                                    "url": f"{url}/pets",
                                    "query": {"kind": "dog"},
                                },
                                {"op": "jq_transform", "expr": "length"},
                            ],
                        )
                    ]
                },
                # Cloud metadata is refused by the guard (even though loopback is allowed here).
                {
                    "tool_calls": [
                        call(
                            "execute_pipeline",
                            steps=[
                                {
                                    "op": "http_request",
                                    "url": "http://169.254.169.254/latest/meta-data",
                                }
                            ],
                        )
                    ]
                },
                {"content": "2 dogs"},
            ],
        }
    )
    run = await aob.finished(await aob.submit(single("count the dogs")))
    assert run["status"] == "completed", run
    counted, blocked = scripted_llm.tool_results()
    assert counted == {"result": 2}
    assert received == [{"method": "GET", "path": "/pets", "query": {"kind": "dog"}}]
    assert blocked["failed_step"] == 0
    assert "blocked by the SSRF guard (ip layer, rule cloud-metadata)" in blocked["error"]


async def test_openapi_action_checks_arguments_against_the_document(
    aob: Aob, scripted_llm: LlmServer, pet_api
):
    url, received = pet_api
    response = await aob.client.post("/api/v1/tools/openapi", json=petstore(url))
    assert response.status_code == 201, response.text
    scripted_llm.serve(
        {
            "match": "buy a pet",
            "turns": [
                {"tool_calls": [call("search_tools", query="add pet")]},
                {
                    "tool_calls": [
                        call(
                            "openapi_action",
                            api="petstore",
                            operation_id="addPet",
                            arguments={"body": {"name": "Nemo"}, "colour": "red"},
                        )
                    ]
                },
                {
                    "tool_calls": [
                        call(
                            "openapi_action",
                            api="petstore",
                            operation_id="addPet",
                            arguments={"body": {"name": "Nemo", "kind": "fish"}},
                        )
                    ]
                },
                {
                    "tool_calls": [
                        call(
                            "openapi_action",
                            api="petstore",
                            operation_id="getPet",
                            arguments={"pet_id": 2},
                        )
                    ]
                },
                {"content": "bought"},
            ],
        }
    )
    run = await aob.finished(await aob.submit(single("buy a pet")))
    assert run["status"] == "completed", run
    found, refused, added, fetched = scripted_llm.tool_results()
    assert found["results"][0]["name"] == "petstore.addPet"
    assert found["results"][0]["has_body"] is True
    assert refused["error"] == (
        "arguments of petstore.addPet: unknown argument 'colour' (this operation takes: body); "
        "body: 'kind' is a required property"
    )
    assert added == {"status": 201, "body": {"id": 4, "name": "Nemo", "kind": "fish"}}
    assert fetched == {"status": 200, "body": PETS[1]}
    assert [r["path"] for r in received] == ["/pets", "/pets/2"]  # nothing for the refused call


async def test_composite_tools_are_found_and_run(aob: Aob, scripted_llm: LlmServer):
    tool = {
        "name": "top-dogs",
        "description": "The best dogs by score",
        "parameters": {"type": "array"},
        "steps": [
            {"op": "table_filter", "field": "kind", "value": "dog"},
            {"op": "top_k", "k": 1, "by": "score"},
            {"op": "table_select", "fields": ["name"]},
        ],
    }
    assert (await aob.client.post("/api/v1/tools", json=tool)).status_code == 201
    animals = [{**p, "score": s} for p, s in zip(PETS, [5, 9, 7], strict=True)]
    scripted_llm.serve(
        {
            "match": "best dog",
            "turns": [
                {"tool_calls": [call("search_tools", query="best dogs")]},
                {"tool_calls": [call("execute_pipeline", tool="top-dogs", input="not a table")]},
                {"tool_calls": [call("execute_pipeline", tool="top-dogs", input=animals)]},
                {"content": "Fido"},
            ],
        }
    )
    run = await aob.finished(await aob.submit(single("best dog")))
    assert run["status"] == "completed", run
    found, wrong, ran = scripted_llm.tool_results()
    assert found["results"][0]["name"] == "top-dogs"
    assert wrong["error"] == (
        "input of composite tool 'top-dogs': (input): 'not a table' is not of type 'array'"
    )
    assert ran == {"result": [{"name": "Fido"}]}
    listed = (await aob.client.get("/api/v1/tools")).json()["items"]
    assert listed == [
        {"name": "top-dogs", "kind": "pipeline", "description": "The best dogs by score"}
    ]


async def test_tool_registration_refuses_what_agents_could_not_use(aob: Aob):
    bad = await aob.client.post(
        "/api/v1/tools/openapi",
        json={"name": "empty", "document": {"openapi": "3.0.0", "paths": {}}},
    )
    assert bad.status_code == 422
    assert bad.json()["detail"] == "spec.document has no operation with an operationId"
    named = await aob.client.post(
        "/api/v1/tools", json={"name": "no spaces", "steps": [{"op": "top_k", "k": 1}]}
    )
    assert named.status_code == 422
    # What a run would refuse is refused when registered (20,000 steps were taken).
    for steps, says in [
        ([{"op": "top_k", "k": 1}] * 51, "spec.steps: step 0 (pipeline): 51 steps > limit 50"),
        (
            [{"op": "top_k", "k": 1}, {"op": "frobnicate"}],
            "spec.steps: step 1 (frobnicate): unknown op",
        ),
        ([], "spec.steps: step 0 (pipeline): steps must be a non-empty array"),
    ]:
        refused = await aob.client.post("/api/v1/tools", json={"name": "many", "steps": steps})
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith(says), refused.json()
    assert (await aob.client.get("/api/v1/tools/nope")).status_code == 404


async def test_delegate_to_agent_waits_for_the_other_agents_answer(
    aob: Aob, scripted_llm: LlmServer
):
    scripted_llm.serve(
        {"match": "translate 'bonjour'", "turns": [{"content": "hello"}]},
        {
            "match": "greet the customer",
            "turns": [
                {
                    "tool_calls": [
                        call(
                            "delegate_to_agent", task="translate 'bonjour'", context={"from": "fr"}
                        )
                    ]
                },
                {"content": "done"},
            ],
        },
    )
    run = await aob.finished(await aob.submit(single("greet the customer")))
    assert run["status"] == "completed", run
    assert scripted_llm.tool_results() == [{"status": "completed", "answer": "hello"}]
    usage = await aob.events_of(run["run_id"], "AgentUsageRecorded")
    assert sorted(u["node_id"] for u in usage) == ["work", "work/delegate-1"]
    delegate_request = next(
        r for r in scripted_llm.requests if "translate 'bonjour'" in r["messages"][2]["content"]
    )
    context = delegate_request["messages"][1]["content"]
    assert (
        "Available tools: execute_pipeline, search_tools, openapi_action, "
        "delegate_to_agent." in context
    )  # depth 1 of 2; no patching for delegates
    assert node(run, "work")["status"] == "completed"


async def test_delegation_depth_is_bounded(aob: Aob, scripted_llm: LlmServer):
    # Every agent delegates again: depth 0 and 1 may, the agent at depth 2 may not.
    scripted_llm.serve(
        {
            "match": "keep delegating",
            "turns": [
                {"tool_calls": [call("delegate_to_agent", task="keep delegating")]},
                {"content": "stopped"},
            ],
        },
    )
    run = await aob.finished(await aob.submit(single("keep delegating")))
    assert run["status"] == "completed", run
    results = scripted_llm.tool_results()
    refused = [r for r in results if "error" in r]
    assert refused == [
        {
            "error": "tool 'delegate_to_agent' is not available here "
            "(available: execute_pipeline, search_tools, openapi_action)"
        }
    ]
    usage = await aob.events_of(run["run_id"], "AgentUsageRecorded")
    assert len(usage) == 3


async def test_each_tool_call_is_recorded_with_its_arguments_result_and_time(
    aob: Aob, scripted_llm: LlmServer
):
    scripted_llm.serve(
        {
            "match": "look for a crm tool",
            "turns": [
                {"tool_calls": [call("search_tools", query="crm"), call("no_such_tool")]},
                {"content": "none found"},
            ],
        },
    )
    run = await aob.finished(await aob.submit(single("look for a crm tool")))
    assert run["status"] == "completed", run
    (usage,) = await aob.events_of(run["run_id"], "AgentUsageRecorded")
    calls = usage["calls"]
    assert [c["name"] for c in calls] == ["search_tools", "no_such_tool"]
    assert usage["tool_calls"] == 2
    assert json.loads(calls[0]["arguments"]) == {"query": "crm"}
    assert json.loads(calls[0]["result"]) == scripted_llm.tool_results()[0]
    assert "error" in json.loads(calls[1]["result"])
    assert all(c["elapsed_ms"] >= 0 for c in calls)
