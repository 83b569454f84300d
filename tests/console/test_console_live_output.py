"""The run page's live-output panel in a real browser: an agent node's tokens show as the
scripted model releases them one by one, before the node completes, and the panel
carries on after the stream is cut and resumed (nothing lost, nothing twice)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.console.live import (
    CuttableProxy,
    DevServer,
    ScriptedLlmProcess,
    start_dev_server,
    start_scripted_llm,
)

GATE = "console"
PIECES = ["Lisbon ", "is ", "sunny ", "and ", "warm ", "today."]
SCRIPT = {
    "conversations": [{"match": "weather in Lisbon", "turns": [{"chunks": PIECES, "gate": GATE}]}]
}
FLOW = {
    "name": "live-output",
    "nodes": [{"id": "ask", "type": "agent", "config": {"prompt": "weather in Lisbon"}}],
}


@pytest.fixture(scope="module")
def gated_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedLlmProcess]:
    llm = start_scripted_llm(SCRIPT, tmp_path_factory.mktemp("gated") / "script.json")
    yield llm
    llm.stop()


@pytest.fixture(scope="module")
def agent_server(
    tmp_path_factory: pytest.TempPathFactory, gated_llm: ScriptedLlmProcess, server: DevServer
) -> Iterator[DevServer]:
    # `server` (the package's) first: the browser fixture needs it, and it skips without
    # chromium before this one starts.
    dev = start_dev_server(
        Path(tmp_path_factory.mktemp("live-output")) / "data", AOB_LLM_BASE_URL=gated_llm.base_url
    )
    yield dev
    dev.stop()


def _release(llm: ScriptedLlmProcess, chunks: int | None = None) -> None:
    body = {} if chunks is None else {"chunks": chunks}
    httpx.post(f"{llm.base_url}/_gates/{GATE}", json=body, timeout=10).raise_for_status()


def _status(server: DevServer, run_id: str) -> str:
    with server.client() as client:
        return str(client.get(f"/api/v1/runs/{run_id}").json()["status"])


def test_tokens_arrive_live_and_resume_after_a_cut(
    agent_server: DevServer, gated_llm: ScriptedLlmProcess, page: Page, shot: object
) -> None:
    target = urlsplit(agent_server.base_url)
    proxy = CuttableProxy((target.hostname or "127.0.0.1", target.port or 80))
    try:
        run_id = agent_server.submit(FLOW)
        page.goto(f"{proxy.base_url}/")
        page.get_by_label("API token").fill(agent_server.admin_token)
        page.get_by_role("button", name="Log in").click()
        page.goto(f"{proxy.base_url}/#/runs/{run_id}")
        text = page.locator('#live-output .live-node[data-node="ask"] .live-text')

        _release(gated_llm, 1)
        expect(text).to_have_text("Lisbon ")
        assert _status(agent_server, run_id) == "running"  # partial text, node still running
        _release(gated_llm, 1)
        expect(text).to_have_text("Lisbon is ")

        proxy.cut()  # pieces come while the browser is cut off
        _release(gated_llm, 2)
        expect(page.locator("#live")).to_have_text("reconnecting…")
        proxy.restore()
        expect(text).to_have_text("Lisbon is sunny and ")
        assert _status(agent_server, run_id) == "running"

        _release(gated_llm)
        expect(text).to_have_text("".join(PIECES))  # every piece once, in order
        expect(page.locator('#live-output .live-node[data-node="ask"] .badge')).to_have_text(
            "completed"
        )
        expect(page.locator("#live")).to_have_text("run finished")
        shot(page, "run-live-output")  # type: ignore[operator]
    finally:
        proxy.close()
