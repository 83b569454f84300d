"""`aob logs stream` (the follow view) shows an agent node's tokens as they arrive, before
the node completes, in text and in JSON lines."""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import Cli
from tests.console.live import ScriptedLlmProcess, start_scripted_llm
from tests.fanout.live import LiveServer

GATE = "cli"
SCRIPT = {
    "conversations": [
        {
            "match": "weather in Lisbon",
            "turns": [{"chunks": ["Sunny ", "and ", "warm."], "gate": GATE}],
        }
    ]
}
FLOW = {
    "name": "live",
    "nodes": [{"id": "ask", "type": "agent", "config": {"prompt": "weather in Lisbon"}}],
}


@pytest.fixture
def llm(tmp_path: Path) -> Iterator[ScriptedLlmProcess]:
    process = start_scripted_llm(SCRIPT, tmp_path / "script.json")
    yield process
    process.stop()


@pytest.fixture
def agent_server(tmp_path: Path, llm: ScriptedLlmProcess) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "data", {"AOB_LLM_BASE_URL": llm.base_url}).start()
    yield live
    live.stop()


def _release(llm: ScriptedLlmProcess, chunks: int | None = None) -> None:
    body = {} if chunks is None else {"chunks": chunks}
    httpx.post(f"{llm.base_url}/_gates/{GATE}", json=body, timeout=10).raise_for_status()


def _read_until(fd: int, needle: bytes, timeout: float = 30) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data:
        assert time.monotonic() < deadline, f"{needle!r} not in {data!r}"
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"the CLI ended before {needle!r}: {data!r}"
            data += chunk
    return data


@pytest.mark.parametrize("output", ["text", "json"])
def test_the_follow_view_shows_tokens_before_the_node_completes(
    agent_server: LiveServer, llm: ScriptedLlmProcess, tmp_path: Path, output: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cli = Cli(home, agent_server.url)
    run_id = agent_server.submit(FLOW)
    follow = cli.popen("logs", "stream", run_id, "--output", output)
    try:
        assert follow.stdout is not None
        fd = follow.stdout.fileno()
        _release(llm, 1)
        seen = _read_until(fd, b"Sunny ")
        assert agent_server.run(run_id)["status"] == "running"  # the node still runs
        assert b"node_completed" not in seen
        _release(llm)
        rest = follow.communicate(timeout=60)[0]
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0
    text = seen.decode() + rest
    if output == "json":
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        tokens = "".join(
            m["data"]["text"]
            for m in lines
            if m.get("event") == "llm_delta" and m["kind"] == "text"
        )
        assert tokens == "Sunny and warm."
        assert lines[-1]["event"] == "end"
    else:
        assert "ask ▸ Sunny " in text
        assert "warm." in text
