"""`aob run status` shows a run's LLM usage per agent node and in total, with its cost,
and says why a budget stopped it: the real CLI against a real dev server whose agent
nodes call the scripted endpoint with the real SDK."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import AOB, REPO, Result
from tests.fanout.live import LiveServer
from tests.fixtures.llm import LlmServer

PRICES = {"scripted": {"input": 1000.0, "output": 1000.0}}  # 1 token = $0.001


@pytest.fixture
async def live(tmp_path: Path, scripted_llm: LlmServer) -> AsyncIterator[LiveServer]:
    env = {
        "AOB_LLM_BASE_URL": scripted_llm.base_url,
        "AOB_LLM_MODEL": "scripted",
        "AOB_MODEL_PRICES": json.dumps(PRICES),
        "AOB_LLM_MAX_RETRIES": "0",
    }
    server = await asyncio.to_thread(LiveServer(tmp_path / "data", env=env).start)
    yield server
    await asyncio.to_thread(server.stop)


async def aob(live: LiveServer, home: Path, *args: str) -> Result:
    """The CLI in a subprocess, awaited: this loop keeps serving the scripted LLM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOB_")}
    env.update({"HOME": str(home), "AOB_SERVER": live.url, "NO_COLOR": "1"})
    process = await asyncio.create_subprocess_exec(
        *AOB,
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert b"Traceback" not in err, err.decode()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def usage(tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": tokens - 10, "completion_tokens": 10, "cached_tokens": 0}


async def test_status_shows_usage_per_node_and_the_budget_that_stopped_the_run(
    live: LiveServer, scripted_llm: LlmServer, tmp_path: Path
) -> None:
    scripted_llm.serve(
        {"match": "first", "turns": [{"content": "done", "usage": usage(300)}]},
        {"match": "second", "turns": [{"content": "done", "usage": usage(400)}]},
    )
    only_pipelines = {"tools": ["execute_pipeline"]}
    definition = {
        "name": "budgeted",
        "budget": {"max_cost_usd": 0.5},
        "nodes": [
            {"id": "a", "type": "agent", "config": {"prompt": "first", **only_pipelines}},
            {"id": "b", "type": "agent", "config": {"prompt": "second", **only_pipelines}},
        ],
        "edges": [{"from": "a", "to": "b"}],
    }
    path = tmp_path / "budgeted.json"
    path.write_text(json.dumps(definition), encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()

    started = await aob(live, home, "run", "start", str(path), "--follow")
    assert started.code == 1, started  # the run failed
    run_id = started.out.split()[1]

    shown = await aob(live, home, "run", "status", run_id)
    assert shown.code == 0, shown
    table = [line.split() for line in shown.out.splitlines()]
    assert ["a", "1", "290", "10", "0", "300", "0.30"] in table
    assert ["b", "1", "390", "10", "0", "400", "0.40"] in table
    assert ["total", "2", "680", "20", "0", "700", "0.70"] in table
    assert "budget     max_cost_usd 0.5 (on exceeded: fail)" in shown.out
    assert "error: " in shown.out
    assert "run budget max_cost_usd 0.50 exceeded: spent 0.70" in shown.out

    as_json = (await aob(live, home, "run", "status", run_id, "-o", "json")).out
    total = json.loads(as_json)["usage"]["total"]
    assert (total["total_tokens"], total["cost_usd"]) == (700, pytest.approx(0.7))
