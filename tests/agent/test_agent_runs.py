"""Agent nodes end to end: the real SDK over real HTTP to the scripted endpoint, the
real engine (log, coordinator, read models) behind the real API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aob.projections.workflow.definition import load_definition
from aob.workers.agent.demo_llm import demo_script
from tests.agent.harness import Aob, agent, call, node
from tests.fixtures.llm import LlmServer

ORDERS = [
    {"id": "o1", "amount": 120, "country": "fr"},
    {"id": "o2", "amount": 15, "country": "de"},
    {"id": "o3", "amount": 300, "country": "fr"},
]


def one_agent(prompt: str = "find the big orders", **config: Any) -> dict[str, Any]:
    return {
        "name": "agentic",
        "nodes": [agent("triage", prompt, **config)],
        "output": ".nodes.triage.answer",
    }


async def test_agent_runs_a_pipeline_and_answers(aob: Aob, scripted_llm: LlmServer):
    steps = [
        {"op": "table_filter", "where": ".amount > 100"},
        {"op": "table_sort", "by": "amount", "descending": True},
        {"op": "table_select", "fields": ["id"]},
    ]
    scripted_llm.serve(
        {
            "match": "big orders",
            "turns": [
                {"tool_calls": [call("execute_pipeline", steps=steps, input=ORDERS)]},
                {"content": "o3 and o1"},
            ],
        }
    )
    run = await aob.finished(await aob.submit(one_agent(), {"orders": ORDERS}))
    assert run["status"] == "completed", run
    assert run["output"] == "o3 and o1"
    assert scripted_llm.tool_results() == [{"result": [{"id": "o3"}, {"id": "o1"}]}]
    first, second = scripted_llm.requests
    # The stable prefix (system prompt + the five tools) opens every request.
    assert first["messages"][0] == second["messages"][0]
    assert first["tools"] == second["tools"]
    assert [t["function"]["name"] for t in first["tools"]] == [
        "execute_pipeline",
        "patch_workflow",
        "search_tools",
        "openapi_action",
        "delegate_to_agent",
    ]
    assert '"o2"' in first["messages"][1]["content"]  # the node sees its inputs
    output = node(run, "triage")["output"]
    assert output["rounds"] == 1
    assert output["tool_calls"] == 1
    (usage,) = await aob.events_of(run["run_id"], "AgentUsageRecorded")
    assert usage["llm_calls"] == 2
    assert usage["outcome"] == "completed"
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert 0 < usage["cached_tokens"] < usage["prompt_tokens"]  # the 2nd call's prefix
    assert output["usage"]["cached_tokens"] == usage["cached_tokens"]


async def test_failing_pipeline_step_is_named_to_the_model(aob: Aob, scripted_llm: LlmServer):
    scripted_llm.serve(
        {
            "match": "big orders",
            "turns": [
                {
                    "tool_calls": [
                        call(
                            "execute_pipeline",
                            input=ORDERS,
                            steps=[
                                {"op": "table_sort", "by": "amount"},
                                {"op": "top_k", "k": "two"},
                            ],
                        )
                    ]
                },
                {
                    "tool_calls": [
                        call(
                            "execute_pipeline",
                            input=ORDERS,
                            steps=[{"op": "table_sort", "by": "amount"}, {"op": "top_k", "k": 1}],
                        )
                    ]
                },
                {"content": "done"},
            ],
        }
    )
    run = await aob.finished(await aob.submit(one_agent(), {"orders": ORDERS}))
    assert run["status"] == "completed", run
    failed, fixed = scripted_llm.tool_results()
    assert failed == {
        "error": "step 1 (top_k): parameter 'k' must be an integer, got a string",
        "failed_step": 1,
    }
    assert fixed == {"result": [ORDERS[1]]}


# --- the patch lane ------------------------------------------------------------------

ADD_NOTIFY = [
    {
        "op": "add",
        "path": "/nodes/-",
        "value": {
            "id": "notify",
            "type": "transform",
            "config": {"expr": '"notified: " + .nodes.plan.answer'},
        },
    },
    {"op": "add", "path": "/edges/-", "value": {"from": "plan", "to": "notify"}},
]


def planner(**extra: Any) -> dict[str, Any]:
    return {
        "name": "planner",
        "nodes": [agent("plan", "plan the follow-up")],
        "edges": [],
        "output": ".nodes.notify",
        **extra,
    }


async def test_valid_patch_is_applied_and_its_nodes_run(aob: Aob, scripted_llm: LlmServer):
    scripted_llm.serve(
        {
            "match": "plan the follow-up",
            "turns": [
                {"tool_calls": [call("patch_workflow", operations=ADD_NOTIFY, reason="tell them")]},
                {"content": "ops"},
            ],
        }
    )
    run = await aob.finished(await aob.submit(planner()))
    assert run["status"] == "completed", run
    assert run["output"] == "notified: ops", (run, scripted_llm.tool_results())
    assert node(run, "notify")["status"] == "completed"
    (result,) = scripted_llm.tool_results()
    assert result["status"] == "applied"
    assert result["added_nodes"] == ["notify"]
    (proposed,) = await aob.events_of(run["run_id"], "PatchProposed")
    assert proposed["node_id"] == "plan"
    assert proposed["reason"] == "tell them"
    assert node(run, "plan")["output"]["patches"] == [
        {"patch_id": result["patch_id"], "status": "applied"}
    ]
    assert [n["id"] for n in run["definition"]["nodes"]] == ["plan", "notify"]


async def test_invalid_patch_is_corrected_on_retry(aob: Aob, scripted_llm: LlmServer):
    wrong = [
        # "operation" for "op", a path without its slash, an edge from a missing node.
        {"operation": "add", "path": "nodes/-", "value": ADD_NOTIFY[0]["value"]},
        {"op": "add", "path": "/edges/-", "value": {"from": "planner", "to": "notify"}},
    ]
    scripted_llm.serve(
        {
            "match": "plan the follow-up",
            "turns": [
                {"tool_calls": [call("patch_workflow", operations=wrong)]},
                {"tool_calls": [call("patch_workflow", operations=ADD_NOTIFY)]},
                {"content": "fixed"},
            ],
        }
    )
    run = await aob.finished(await aob.submit(planner()))
    assert run["status"] == "completed", run
    assert run["output"] == "notified: fixed"
    refused, applied = scripted_llm.tool_results()
    assert refused["status"] == "rejected"
    assert refused["attempts_left"] == 2
    assert any("'op' must be one of" in p for p in refused["problems"])
    example = refused["corrected_example"]
    assert example[0]["op"] == "add"
    assert example[0]["path"] == "/nodes/-"
    assert applied["status"] == "applied"
    # The refused patch never reached the log; the corrected one did.
    assert len(await aob.events_of(run["run_id"], "PatchProposed")) == 1


async def test_patch_refused_by_the_coordinator_goes_back_to_the_model(
    aob: Aob, scripted_llm: LlmServer
):
    # Six agent nodes: the coordinator's spawn limit (5 per run) refuses it; the
    # runner's own pre-check leaves that rule to the coordinator, which knows the count.
    agents = [
        {"op": "add", "path": "/nodes/-", "value": agent(f"helper{i}", "help")} for i in range(6)
    ]
    scripted_llm.serve(
        {
            "match": "plan the follow-up",
            "turns": [
                {"tool_calls": [call("patch_workflow", operations=agents)]},
                {"content": "gave up"},
            ],
        }
    )
    definition = {"name": "planner", "nodes": [agent("plan", "plan the follow-up")]}
    run = await aob.finished(await aob.submit(definition))
    assert run["status"] == "completed", run
    (refused,) = scripted_llm.tool_results()
    assert refused["status"] == "rejected"
    assert any("agent spawn limit" in p for p in refused["problems"])
    (rejected,) = await aob.events_of(run["run_id"], "PatchRejected")
    assert rejected["patch_id"]


async def test_too_many_invalid_patches_fail_the_node(aob: Aob, scripted_llm: LlmServer):
    bad = [{"op": "remove", "path": "/nodes/0"}]  # the running agent itself: frozen
    scripted_llm.serve(
        {
            "match": "plan the follow-up",
            "turns": [
                {"tool_calls": [call("patch_workflow", operations=bad)]},
            ],
        }
    )
    run = await aob.finished(await aob.submit(planner()))
    assert run["status"] == "failed"
    assert "3 invalid patches (limit 3)" in run["error"]
    assert "frozen node: 'plan' has started" in run["error"]


async def test_the_readme_example_runs_offline(aob: Aob, scripted_llm: LlmServer):
    """examples/agent-triage.yaml against the demo endpoint's own script."""
    examples = Path(__file__).parents[2] / "examples"
    definition = load_definition((examples / "agent-triage.yaml").read_text())
    inputs = json.loads((examples / "agent-triage.inputs.json").read_text())
    scripted_llm.llm.script = demo_script()
    run = await aob.finished(await aob.submit(definition, inputs))
    assert run["status"] == "completed", run
    assert run["output"]["follow_up"].startswith("escalate: The largest orders are o3")
    ranked, patched = scripted_llm.tool_results()
    assert ranked == {"result": [{"id": "o3", "amount": 300}, {"id": "o1", "amount": 120}]}
    assert patched["status"] == "applied"
