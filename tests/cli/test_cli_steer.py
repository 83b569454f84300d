"""Steering runs from the CLI: human approvals and agents' patches."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.cli.conftest import Cli
from tests.fanout.live import HELD, LiveServer

GATE: dict[str, Any] = {
    "name": "gate",
    "output": ".nodes.ship // .nodes.undo",
    "nodes": [
        {
            "id": "review",
            "type": "hitl",
            "config": {"message": "Ship {{ .inputs.what }}?", "rejection_path": ["undo"]},
        },
        {"id": "ship", "type": "noop", "config": {"output": "shipped"}},
        {"id": "undo", "type": "noop", "config": {"output": "rolled back"}},
    ],
    "edges": [{"from": "review", "to": "ship"}],
}


def pending_approval(server: LiveServer, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    with server.client() as client:
        while time.monotonic() < deadline:
            items = client.get("/api/v1/approvals", params={"run_id": run_id}).json()["items"]
            if items:
                approval: dict[str, Any] = items[0]
                return approval
            time.sleep(0.05)
    raise AssertionError("no approval was requested")


def test_approve_and_reject_as_in_the_seed(aob: Cli, server: LiveServer, tmp_path: Path) -> None:
    (tmp_path / "gate.json").write_text(json.dumps(GATE), encoding="utf-8")
    approved_run = aob(
        "run", "start", str(tmp_path / "gate.json"), "--input", "what=v2", "-o", "json"
    ).json()["run_id"]
    ticket = pending_approval(server, approved_run)["approval_id"]

    status = aob("run", "status", approved_run)
    assert "waiting" in status.out
    assert f"waiting for approval {ticket} (node review): Ship v2?" in status.out

    decided = aob("approve", ticket, "approve", "--reason", "LGTM")
    assert decided.code == 0, decided.err
    assert decided.out.strip() == f"approval {ticket} approved: LGTM"
    assert server.wait_finished(approved_run)["output"] == "shipped"
    logs = aob("logs", "stream", approved_run)
    assert "approval_required" not in logs.out  # people see words, not event names
    assert f"approval {ticket} required: Ship v2?" in logs.out
    assert f"approval {ticket} approved by anonymous: LGTM" in logs.out

    rejected_run = server.submit(GATE, {"what": "v3"})
    other = pending_approval(server, rejected_run)["approval_id"]
    refused = aob("approve", other, "reject", "--reason", "Need validation", "--actor", "carol")
    assert refused.code == 0
    run = server.wait_finished(rejected_run)
    assert run["output"] == "rolled back"

    twice = aob("approve", other, "approve")
    assert twice.code == 3
    assert len(twice.err.splitlines()) == 1
    unknown = aob("approve", "ticket_456", "approve", "--reason", "LGTM")
    assert unknown.code == 3
    assert unknown.err.startswith("aob: ")


def test_patch_list_show_and_decisions(aob: Cli, server: LiveServer) -> None:
    run_id = server.submit(HELD)
    operations = [
        {
            "op": "add",
            "path": "/nodes/-",
            "value": {"id": "extra", "type": "noop", "config": {"output": "x"}},
        }
    ]
    with server.client() as client:
        response = client.post(
            f"/api/v1/runs/{run_id}/patch", json={"operations": operations, "reason": "more work"}
        )
        assert response.status_code in (200, 202), response.text
        patch_id = response.json()["patch_id"]

    listing = aob("patch", "list", run_id)
    assert listing.out.splitlines()[0].split() == [
        "PATCH",
        "STATUS",
        "REVIEW",
        "BY",
        "REVISION",
        "OPS",
        "PROPOSED",
        "REASON",
    ]
    assert patch_id in listing.out
    assert "more work" in listing.out

    shown = aob("patch", "show", patch_id)  # no --run: the CLI finds the run
    assert shown.code == 0, shown.err
    assert f"patch {patch_id}" in shown.out
    assert f"(run {run_id})" in shown.out or "(run -)" in shown.out
    diff = shown.out[shown.out.index("--- before") :]
    assert "+- id: extra" in diff
    assert "+  type: noop" in diff
    assert not [
        line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")
    ]

    as_json = aob("patch", "show", patch_id, "--run", run_id, "-o", "json").json()
    assert as_json["patch_id"] == patch_id
    assert "+- id: extra" in as_json["unified_diff"]

    # Applied at once, so there is nothing to approve: one clear line, whatever the server.
    decision = aob("patch", "approve", patch_id, "--reason", "Safe")
    assert decision.code == 3
    assert len(decision.err.splitlines()) == 1
    missing = aob("patch", "show", "patch_nope", "--run", run_id)
    assert (missing.code, missing.err) == (3, f"aob: run {run_id} has no patch patch_nope\n")
    server.cancel(run_id)
