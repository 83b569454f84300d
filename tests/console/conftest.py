"""Browser tests of the web console: Debian's chromium driven by Playwright against a live
`aob server dev` (and a scripted LLM endpoint for the agent's patch). Screenshots of each
page go to tests/console/screenshots/ (or $AOB_CONSOLE_SCREENSHOTS); the run prints where."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.console.live import (
    CHROMIUM,
    DevServer,
    ScriptedLlmProcess,
    start_dev_server,
    start_scripted_llm,
)

playwright_sync = pytest.importorskip("playwright.sync_api")
# Conditions in a live system take a moment (a run, an LLM round): wait up to 20 s.
playwright_sync.expect.set_options(timeout=20_000)

SCREENSHOTS = Path(
    os.environ.get("AOB_CONSOLE_SCREENSHOTS") or Path(__file__).parent / "screenshots"
)

# The agent of tests/console/test_console.py::test_agent_patch_review proposes this patch.
ADD_NOTIFY = [
    {
        "op": "add",
        "path": "/nodes/-",
        "value": {"id": "notify", "type": "transform", "config": {"expr": '"sent"'}},
    },
    {"op": "add", "path": "/edges/-", "value": {"from": "plan", "to": "notify"}},
]
LLM_SCRIPT: dict[str, Any] = {
    "conversations": [
        {
            "match": "plan the follow-up",
            "turns": [
                {
                    "tool_calls": [
                        {
                            "name": "patch_workflow",
                            "arguments": {"operations": ADD_NOTIFY, "reason": "notify ops"},
                        }
                    ]
                },
                {"content": "proposed"},
            ],
        }
    ]
}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SCREENSHOTS.is_dir() and any(SCREENSHOTS.glob("*.png")):
        terminalreporter.write_line(f"console screenshots: {SCREENSHOTS.resolve()}")


@pytest.fixture(scope="package")
def scripted_llm_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedLlmProcess]:
    llm = start_scripted_llm(LLM_SCRIPT, tmp_path_factory.mktemp("llm") / "script.json")
    yield llm
    llm.stop()


@pytest.fixture(scope="package")
def server(
    tmp_path_factory: pytest.TempPathFactory, scripted_llm_process: ScriptedLlmProcess
) -> Iterator[DevServer]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium (infra/test does)")
    dev = start_dev_server(
        tmp_path_factory.mktemp("console") / "data",
        AOB_LLM_BASE_URL=scripted_llm_process.base_url,
        AOB_HTTP_ALLOW="127.0.0.1",
        AOB_HTTP_PORTS="1-65535",
    )
    yield dev
    dev.stop()


@pytest.fixture(scope="package")
def browser(server: DevServer) -> Iterator[Any]:
    # Package scope, not session: while Playwright's sync API is open, its event loop
    # runs in this thread, and every asyncio test after this package would fail with
    # "Runner.run() cannot be called from a running event loop".
    with playwright_sync.sync_playwright() as playwright:
        # Debian's chromium, never a downloaded build; root in CI needs --no-sandbox.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"the console threw: {errors}"


@pytest.fixture
def shot() -> Any:
    """shot(page, name): a full-page screenshot under SCREENSHOTS."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page: Any, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
