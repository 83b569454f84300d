"""`aob patch show|approve|reject` on an agent's patch held for review, as the seed shows:

aob patch list run_7f3e4a
aob patch show patch_abc123
aob patch approve patch_abc123 --reason "Safe"
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Cli
from tests.console.live import start_scripted_llm
from tests.fanout.live import LiveServer

ADD_NOTIFY = [
    {
        "op": "add",
        "path": "/nodes/-",
        "value": {"id": "notify", "type": "transform", "config": {"expr": '"sent"'}},
    },
    {"op": "add", "path": "/edges/-", "value": {"from": "plan", "to": "notify"}},
]


def reviewed(prompt: str) -> dict[str, Any]:
    return {
        "name": "reviewed",
        "patch_policy": "review",
        "edges": [],
        "nodes": [{"id": "plan", "type": "agent", "config": {"prompt": prompt}}],
        "output": "{plan: .nodes.plan.answer, notify: .nodes.notify}",
    }


def conversation(prompt: str) -> dict[str, Any]:
    return {
        "match": prompt,
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


@pytest.fixture
def llm_url(tmp_path: Path) -> Iterator[str]:
    """The scripted OpenAI-compatible endpoint, in a process of its own."""
    script = {"conversations": [conversation("plan A"), conversation("plan B")]}
    llm = start_scripted_llm(script, tmp_path / "script.json")
    yield llm.base_url
    llm.stop()


@pytest.fixture
def agent_server(tmp_path: Path, llm_url: str) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "data", env={"AOB_LLM_BASE_URL": llm_url}).start()
    yield live
    live.stop()


def pending_patch(server: LiveServer, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    with server.client() as client:
        while time.monotonic() < deadline:
            items = client.get(f"/api/v1/runs/{run_id}/patches").json()["items"]
            if items and items[0]["review"] == "pending":
                patch: dict[str, Any] = items[0]
                return patch
            time.sleep(0.05)
    raise AssertionError(f"no patch awaiting review in run {run_id}")


def test_review_an_agents_patch_from_the_cli(agent_server: LiveServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    aob = Cli(home, agent_server.url)
    (tmp_path / "a.json").write_text(json.dumps(reviewed("plan A")))
    run_a = aob("run", "start", str(tmp_path / "a.json"), "-o", "json").json()["run_id"]
    patch_a = pending_patch(agent_server, run_a)["patch_id"]

    listing = aob("patch", "list", run_a)
    row = next(line for line in listing.out.splitlines() if line.startswith(patch_a))
    assert row.split()[1:4] == ["proposed", "pending", "plan"]

    shown = aob("patch", "show", patch_a)
    assert shown.code == 0, shown.err
    assert "review    pending" in shown.out
    assert "agent     plan" in shown.out
    assert "+- id: notify" in shown.out
    assert "+- from: plan" in shown.out

    approved = aob("patch", "approve", patch_a, "--reason", "Safe", "--actor", "carol")
    assert approved.code == 0, approved.err
    assert approved.out.strip() == f"patch {patch_a} applied"
    run = agent_server.wait_finished(run_a)
    assert run["output"] == {"plan": "proposed", "notify": "sent"}
    after = aob("patch", "show", patch_a, "-o", "json").json()
    assert (after["review"], after["reviewed_by"], after["review_reason"]) == (
        "approved",
        "carol",
        "Safe",
    )

    (tmp_path / "b.json").write_text(json.dumps(reviewed("plan B")))
    run_b = aob("run", "start", str(tmp_path / "b.json"), "-o", "json").json()["run_id"]
    patch_b = pending_patch(agent_server, run_b)["patch_id"]
    rejected = aob("patch", "reject", patch_b, "--run", run_b, "--reason", "Need validation")
    assert rejected.code == 0, rejected.err
    assert rejected.out.strip() == f"patch {patch_b} rejected"
    assert agent_server.wait_finished(run_b)["output"] == {"plan": "proposed", "notify": None}

    again = aob("patch", "approve", patch_b)
    assert again.code == 3
    assert again.err == f"aob: patch {patch_b!r} is rejected\n"
