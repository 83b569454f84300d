"""Streamed LLM output (docs/streaming.md): the real openai SDK streams from the scripted
endpoint over real HTTP; an agent node's tokens reach the run's SSE and WebSocket
subscribers while it runs; a reconnect resumes without gap or repeat; the durable log
keeps what it kept before; a hostile stream stays bounded."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Any

import openai
import pytest
import websockets
from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageFunctionToolCall

from aob.workers.agent.llm import Endpoint, LlmClients
from tests.agent.harness import agent, call
from tests.agent.streaming import Read, Served, read_sse, served_aob, until
from tests.fixtures.llm import LlmServer

_SMALL_USAGE = {"prompt_tokens": 10, "completion_tokens": 10}  # under the token budget
ANSWER = "The weather in Lisbon is sunny and warm today."


def _flow(prompt: str = "weather in Lisbon", node_id: str = "ask") -> dict[str, Any]:
    return {"name": "streamed", "nodes": [agent(node_id, prompt)]}


async def test_the_sdk_streams_the_scripted_answer_with_tool_calls_and_usage(
    scripted_llm: LlmServer,
) -> None:
    scripted_llm.serve(
        {
            "match": "weather",
            "turns": [
                {
                    "tool_calls": [call("search", query="Lisbon weather", limit=3)],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 7},
                },
            ],
        }
    )
    client = openai.AsyncOpenAI(base_url=scripted_llm.base_url, api_key="x", max_retries=0)
    stream = await client.chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": "weather?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    await client.close()
    pieces = [c.choices[0].delta.tool_calls for c in chunks if c.choices]
    arguments = "".join(
        (call.function.arguments or "")
        for piece in pieces
        if piece
        for call in piece
        if call.function is not None
    )
    assert json.loads(arguments) == {"query": "Lisbon weather", "limit": 3}
    assert sum(1 for piece in pieces if piece) > 2  # the arguments came in pieces
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 50
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


async def test_the_assembled_completion_is_the_one_a_plain_request_gets(
    scripted_llm: LlmServer,
) -> None:
    scripted_llm.serve(
        {"match": "weather", "turns": [{"tool_calls": [call("search", q="a")], "content": "x"}]}
    )
    endpoint = Endpoint(scripted_llm.base_url, "scripted", "key", max_retries=0)
    clients = LlmClients()
    messages = [{"role": "user", "content": "weather"}]
    try:
        streamed = await clients.complete(endpoint, messages, [])
        plain = await clients.client(endpoint).chat.completions.create(
            model="scripted",
            messages=messages,  # type: ignore[arg-type]
        )
    finally:
        await clients.aclose()
    assert scripted_llm.requests[0]["stream"] is True
    assert scripted_llm.requests[0]["stream_options"] == {"include_usage": True}
    got, want = streamed.choices[0], plain.choices[0]
    assert got.message.content == want.message.content == "x"
    assert got.finish_reason == want.finish_reason == "tool_calls"
    assert _function_calls(got.message) == _function_calls(want.message)
    assert streamed.usage is not None
    assert plain.usage is not None
    assert streamed.usage.total_tokens > 0
    assert streamed.usage.prompt_tokens_details is not None


@pytest.fixture
async def served(tmp_path: Path, scripted_llm: LlmServer) -> Any:
    async with served_aob(tmp_path / "data", scripted_llm.base_url, delta_flush_ms=0) as aob:
        yield aob


def _gated(gate: str = "g", content: str = ANSWER, **turn: Any) -> dict[str, Any]:
    return {"match": "weather", "turns": [{"content": content, "gate": gate, **turn}]}


async def test_tokens_reach_sse_subscribers_before_the_node_completes(
    served: Served, scripted_llm: LlmServer
) -> None:
    scripted_llm.serve(_gated())
    run_id = await served.submit(_flow())
    seen_partial: list[str] = []

    async def on_frame(read: Read) -> None:
        if read.frames[-1].event != "llm_delta" or seen_partial:
            return
        run = await served.run(run_id)
        assert run["status"] == "running"  # the node has not completed: tokens came live
        seen_partial.append(read.text())
        scripted_llm.release("g")  # now the rest

    async with served.client() as client:
        reader = asyncio.create_task(
            read_sse(client, run_id, params={"from": "start"}, on_frame=on_frame)
        )
        await until(lambda: asyncio.sleep(0, scripted_llm.requests), "the agent called the model")
        scripted_llm.release("g", 1)  # one piece only
        read = await asyncio.wait_for(reader, 30)
    assert seen_partial == ["The "]
    assert read.text() == ANSWER
    events = read.events()
    assert events.index("llm_delta") < events.index("node_completed")
    assert events[-1] == "end"
    usage = read.deltas("usage")
    assert usage
    assert usage[-1]["data"]["usage"]["total_tokens"] > 0
    # The durable log keeps the outcome and the usage, never a delta.
    types = [e["type"] for e in await served.events(run_id)]
    assert "AgentUsageRecorded" in types
    assert "NodeCompleted" in types
    assert not [t for t in types if "delta" in t.lower()]
    run = await served.run(run_id)
    assert run["status"] == "completed"
    assert run["output"] is None or ANSWER in json.dumps(run)


async def test_a_reconnect_with_last_event_id_resumes_without_gap_or_repeat(
    served: Served, scripted_llm: LlmServer
) -> None:
    words = [f"w{n} " for n in range(12)]
    scripted_llm.serve({"match": "weather", "turns": [{"chunks": words, "gate": "r"}]})
    run_id = await served.submit(_flow())
    async with served.client() as client:
        scripted_llm.release("r", 4)
        first = await read_sse(
            client,
            run_id,
            params={"from": "start"},
            stop=lambda read: len(read.deltas("text")) >= 4 and "node_started" in read.events(),
        )
        assert first.text() == "".join(words[:4])
        cursor = first.last_id
        assert cursor is not None
        assert cursor.count(":") == 2
        scripted_llm.release("r", 5)  # produced while nobody listens
        await until(lambda: asyncio.sleep(0, scripted_llm.sent("r") >= 9), "9 pieces sent")
        reader = asyncio.create_task(read_sse(client, run_id, headers={"Last-Event-ID": cursor}))
        await until(
            lambda: asyncio.sleep(0, served.engine.deltas.store.stats["subscribers"]),
            "the second stream subscribed",
        )
        scripted_llm.release("r")
        second = await asyncio.wait_for(reader, 30)
    assert first.text() + second.text() == "".join(words)
    positions = [d["position"] for d in first.deltas() + second.deltas()]
    assert positions == sorted(set(positions))  # no repeat
    first_events = [f.data["event_id"] for f in first.frames if "event_id" in f.data]
    second_events = [f.data["event_id"] for f in second.frames if "event_id" in f.data]
    assert not set(first_events) & set(second_events)
    assert "node_completed" in second.events()
    assert second.events()[-1] == "end"
    assert "workflow_started" in first.events()
    assert "workflow_started" not in second.events()


async def test_a_websocket_subscriber_gets_the_deltas_too(
    served: Served, scripted_llm: LlmServer
) -> None:
    scripted_llm.serve(_gated(gate="ws"))
    run_id = await served.submit(_flow())
    url = served.base_url.replace("http", "ws") + f"/api/v1/runs/{run_id}/ws?deltas=true&from=start"
    messages: list[dict[str, Any]] = []
    async with websockets.connect(url) as socket:
        scripted_llm.release("ws")
        async for raw in socket:
            messages.append(json.loads(raw))
            if messages[-1]["event"] == "end":
                break
    text = "".join(
        m["data"]["text"] for m in messages if m.get("event") == "llm_delta" and m["kind"] == "text"
    )
    assert text == ANSWER
    assert all("cursor" in m for m in messages if m["event"] not in ("end", "heartbeat"))


@pytest.mark.parametrize(
    "cursor",
    [
        "1:x",
        # Past what a store holds: overflowed SQLite after the 200 was sent (an audit).
        "9223372036854775808",
        "99999999999999999999:e:0",
        "1:e:\u00b2",  # a superscript two: str.isdigit() says yes, int() says no
    ],
)
async def test_a_bad_cursor_is_a_400(served: Served, scripted_llm: LlmServer, cursor: str) -> None:
    scripted_llm.serve(_gated(gate="bad"))
    run_id = await served.submit(_flow())
    async with served.client() as client:
        response = await client.get(
            f"/api/v1/runs/{run_id}/stream",
            params={"deltas": "true", "cursor": cursor},
        )
    scripted_llm.release("bad")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "cursor" in response.json()["detail"]


async def test_a_flood_and_a_huge_output_stay_bounded_and_other_runs_stream_on(
    tmp_path: Path, scripted_llm: LlmServer
) -> None:
    huge = "x" * 3_000_000  # one chunk of 3 MB
    flood = "y" * 20_000  # 20,000 one-character chunks
    scripted_llm.serve(
        {"match": "huge output", "turns": [{"chunks": [huge], "usage": _SMALL_USAGE}]},
        {"match": "flood of tokens", "turns": [{"content": flood, "chunk_chars": 1}]},
        {"match": "weather", "turns": [{"content": ANSWER, "gate": "victim"}]},
    )
    bounds = {
        "delta_ring": 100,
        "delta_run_bytes": 64 * 1024,
        "delta_bytes": 1024,
        "delta_attempt_bytes": 1024 * 1024,
        "delta_flush_ms": 50,
    }
    async with served_aob(tmp_path / "data", scripted_llm.base_url, **bounds) as served:
        store = served.engine.deltas.store
        published: list[int] = []
        original = store.add

        def counting_add(delta: Any, position: Any = None, size: Any = None) -> None:
            published.append(1)
            original(delta, position, size)

        store.add = counting_add
        victim = await served.submit(_flow())
        hostile = await served.submit(_flow("huge output", "big"))
        flooder = await served.submit(_flow("flood of tokens", "flood"))
        async with served.client() as client:
            reader = asyncio.create_task(read_sse(client, victim, params={"from": "start"}))
            for run_id in (hostile, flooder):
                await until(
                    functools.partial(_finished, served, run_id), f"run {run_id} finished", 60
                )
            scripted_llm.release("victim")
            read = await asyncio.wait_for(reader, 30)
        assert read.text() == ANSWER  # the victim's stream went on
        for run_id in (hostile, flooder):
            kept = store.retained(run_id)
            assert len(kept) <= 100
            assert sum(d.size for d in kept) <= 64 * 1024
            assert all(len(json.dumps(d.delta.data)) < 1024 + 200 for d in kept)
        # The huge attempt stopped streaming at its limit, with a notice.
        assert store.retained(hostile)[-1].delta.kind == "truncated"
        run = await served.run(hostile)
        assert run["status"] == "completed"
        (usage,) = [
            e["data"] for e in await served.events(hostile) if e["type"] == "AgentUsageRecorded"
        ]
        assert usage["outcome"] == "completed"  # the durable record, as without streaming
        # The flood was coalesced: far fewer deltas than the 20,000 chunks.
        assert len(published) < 1024 + 2000


async def _finished(served: Served, run_id: str) -> bool:
    return (await served.run(run_id))["status"] in ("completed", "failed")


def _function_calls(message: ChatCompletionMessage) -> list[tuple[str, str]]:
    """A message's function tool calls as (name, arguments)."""
    return [
        (call.function.name, call.function.arguments)
        for call in message.tool_calls or []
        if isinstance(call, ChatCompletionMessageFunctionToolCall)
    ]
