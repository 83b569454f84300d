"""LLM errors and the bounds of an agent node: retries, rounds, tokens, wall time."""

from __future__ import annotations

from typing import Any

from tests.agent.harness import Aob, agent, call, node
from tests.fixtures.llm import LlmServer

PIPELINE = call("execute_pipeline", steps=[{"op": "jq_transform", "expr": "1 + 1"}])


def single(prompt: str = "do the work", **config: Any) -> dict[str, Any]:
    return {
        "name": "bounded",
        "nodes": [agent("work", prompt, **config)],
        "output": ".nodes.work.answer",
    }


async def test_a_429_is_retried_by_the_sdk(aob: Aob, scripted_llm: LlmServer):
    scripted_llm.serve(
        {
            "match": "do the work",
            "turns": [
                {"content": "done", "errors": [{"status": 429, "retry_after_ms": 20}]},
            ],
        }
    )
    run = await aob.finished(await aob.submit(single()))
    assert run["status"] == "completed", run
    assert run["output"] == "done"
    assert len(scripted_llm.requests) == 2  # the 429, then the retry
    assert node(run, "work")["attempt"] == 1  # retried inside the attempt, by the SDK


async def test_5xx_after_every_retry_fails_the_attempt_retryably(aob: Aob, scripted_llm: LlmServer):
    errors = [{"status": 503, "message": "overloaded"}] * 3
    scripted_llm.serve({"match": "do the work", "turns": [{"content": "late", "errors": errors}]})
    definition = single()
    definition["nodes"][0]["retry"] = {"max_attempts": 2, "initial_backoff_ms": 1}
    run = await aob.finished(await aob.submit(definition))
    # max_retries 2: three 503s fail attempt 1; the node's retry policy runs attempt 2.
    assert run["status"] == "completed", run
    assert run["output"] == "late"
    assert node(run, "work")["attempt"] == 2
    assert len(scripted_llm.requests) == 4
    failures = await aob.events_of(run["run_id"], "NodeFailed")
    assert len(failures) == 1
    assert "answered HTTP 503 after 2 retries: overloaded" in failures[0]["error"]
    assert failures[0]["retryable"] is True


async def test_a_4xx_fails_the_node_without_retries(aob: Aob, scripted_llm: LlmServer):
    scripted_llm.serve(
        {
            "match": "do the work",
            "turns": [{"content": "never", "errors": [{"status": 400, "message": "bad model"}]}],
        }
    )
    definition = single()
    definition["nodes"][0]["retry"] = {"max_attempts": 3, "initial_backoff_ms": 1}
    run = await aob.finished(await aob.submit(definition))
    assert run["status"] == "failed"
    assert "answered HTTP 400: bad model" in run["error"]
    assert len(scripted_llm.requests) == 1


async def test_round_limit_fails_the_node(aob: Aob, scripted_llm: LlmServer):
    scripted_llm.serve({"match": "do the work", "turns": [{"tool_calls": [PIPELINE]}]})
    run = await aob.finished(await aob.submit(single(max_rounds=2)))
    assert run["status"] == "failed"
    assert "exceeded its limit of 2 tool-call rounds" in run["error"]
    assert len(scripted_llm.requests) == 3
    (usage,) = await aob.events_of(run["run_id"], "AgentUsageRecorded")
    assert usage["outcome"] == "failed"
    assert usage["llm_calls"] == 3
    assert usage["tool_calls"] == 2


async def test_token_budget_fails_the_node(aob: Aob, scripted_llm: LlmServer):
    usage = {"prompt_tokens": 400, "completion_tokens": 100}
    scripted_llm.serve(
        {"match": "do the work", "turns": [{"tool_calls": [PIPELINE], "usage": usage}]}
    )
    run = await aob.finished(await aob.submit(single(max_tokens=1200)))
    assert run["status"] == "failed"
    assert "exceeded its token budget of 1200 tokens (1500 used in 3 LLM calls" in run["error"]


async def test_wall_time_fails_the_node(aob: Aob, scripted_llm: LlmServer):
    scripted_llm.serve(
        {"match": "do the work", "turns": [{"tool_calls": [PIPELINE], "delay_ms": 150}]}
    )
    run = await aob.finished(await aob.submit(single(max_wall_ms=400)))
    assert run["status"] == "failed"
    assert "exceeded its wall time of 400 ms" in run["error"]


async def test_json_output_is_asked_again_until_it_parses(aob: Aob, scripted_llm: LlmServer):
    scripted_llm.serve(
        {
            "match": "do the work",
            "turns": [
                {"content": "here you go: {oops"},
                {"content": '{"total": 2}'},
            ],
        }
    )
    run = await aob.finished(await aob.submit(single(output="json")))
    assert run["status"] == "completed", run
    assert run["output"] == {"total": 2}
    assert "must be valid JSON" in scripted_llm.requests[1]["messages"][-1]["content"]


async def test_bad_config_is_refused_at_submission(aob: Aob, scripted_llm: LlmServer):
    # The agent schema (docs/reference/nodes.md) refuses it before any run exists; the
    # worker's own check (tests/agent/test_agent_config.py) stays for patched-in nodes.
    body = {"definition": single(max_rounds="many", colour="red"), "inputs": {}}
    response = await aob.client.post("/api/v1/runs", json=body)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert [e["path"] for e in errors] == ["/nodes/0/config", "/nodes/0/config/max_rounds"]
    assert "'colour' was unexpected" in errors[0]["message"]
    assert scripted_llm.requests == []


async def test_prompt_templates_see_the_run(aob: Aob, scripted_llm: LlmServer):
    scripted_llm.serve({"match": "summarise ticket T-42", "turns": [{"content": "ok"}]})
    run = await aob.finished(
        await aob.submit(single(prompt="summarise ticket {{ .inputs.ticket }}"), {"ticket": "T-42"})
    )
    assert run["status"] == "completed", run
    assert run["output"] == "ok"


async def test_large_answers_go_to_the_blob_store(aob: Aob, scripted_llm: LlmServer):
    big = "x" * (70 * 1024)
    scripted_llm.serve({"match": "do the work", "turns": [{"content": big}]})
    run = await aob.finished(await aob.submit(single()))
    assert run["status"] == "completed", run
    answer = node(run, "work")["output"]["answer"]
    assert answer["bytes"] == len(big) + 2  # as JSON text
    assert answer["$blob"].startswith("sha256:")
    stored = await aob.engine.agent.blobs.get(answer["$blob"])  # type: ignore[union-attr]
    assert stored == f'"{big}"'.encode()


async def test_a_node_cannot_raise_the_deployments_token_ceiling(aob: Aob, scripted_llm: LlmServer):
    """A tenant's `max_tokens: 1e9` would lift the operator's bound (AOB_LLM_MAX_TOKENS):
    the node fails naming the setting, before any LLM call; another run goes on."""
    scripted_llm.serve({"match": "do the work", "turns": [{"content": "done"}]})
    greedy = await aob.finished(await aob.submit(single(max_tokens=1_000_000_000)))
    assert greedy["status"] == "failed"
    assert (
        "config.max_tokens: 1000000000 is over this deployment's AOB_LLM_MAX_TOKENS"
        in (greedy["error"])
    )
    assert scripted_llm.requests == []
    modest = await aob.finished(await aob.submit(single(max_tokens=50_000)))
    assert modest["status"] == "completed", modest["error"]
