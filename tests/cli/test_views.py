"""The CLI's views agree with the run: a hitl node waits while its run waits and is
cancelled with it, a replay lists the nodes it carried over, a patch awaiting review
says how to decide it, inline runs are listed by name, events read as words."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from tests.cli.conftest import Cli
from tests.cli.test_cli_patch_review import (  # noqa: F401 (fixtures)
    agent_server,
    llm_url,
    pending_patch,
    reviewed,
)
from tests.fanout.live import FAILING, QUICK, LiveServer

GATED = {
    "name": "gated",
    "nodes": [
        {"id": "prepare", "type": "noop", "config": {"output": 1}},
        {
            "id": "gate",
            "type": "hitl",
            "config": {"message": "Ship it?", "allow_self_approval": True},
        },
        {"id": "ship", "type": "noop"},
    ],
    "edges": [{"from": "prepare", "to": "gate"}, {"from": "gate", "to": "ship"}],
}


def wait_for(condition: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def node_row(status_text: str, node_id: str) -> list[str]:
    line = next(line for line in status_text.splitlines() if line.startswith(f"{node_id} "))
    return line.split()


def test_a_hitl_node_waits_with_its_run_and_is_cancelled_with_it(
    aob: Cli, server: LiveServer, write_json: Any
) -> None:
    started = aob("run", "start", str(write_json("gated.json", GATED)), "-o", "json")
    run_id = started.json()["run_id"]
    wait_for(lambda: server.run(run_id)["status"] == "waiting", "the run waiting")

    shown = aob("run", "status", run_id)
    assert f"run {run_id}  waiting" in shown.out
    assert node_row(shown.out, "gate")[:3] == ["gate", "hitl", "waiting"]
    approval_id = re.search(r"waiting for approval (\S+)", shown.out).group(1)  # type: ignore[union-attr]
    assert f'aob approve {approval_id} approve|reject --reason "..."' in shown.out

    assert aob("run", "cancel", run_id).code == 0
    server.wait_finished(run_id)
    shown = aob("run", "status", run_id)
    assert f"run {run_id}  cancelled" in shown.out
    assert node_row(shown.out, "gate")[:3] == ["gate", "hitl", "cancelled"]
    as_json = aob("run", "status", run_id, "-o", "json").json()
    assert {n["node_id"]: n["status"] for n in as_json["nodes"]} == {
        "prepare": "completed",
        "gate": "cancelled",
    }


def test_a_replay_lists_the_nodes_it_carried_over(aob: Cli, server: LiveServer) -> None:
    run_id = server.submit(FAILING)
    server.wait_finished(run_id)
    last = server.events(run_id)[-1]["offset"]
    replayed = aob("replay", run_id, "--from-event", str(last), "-o", "json")
    assert replayed.code == 0, replayed.err
    new_run = replayed.json()["run_id"]
    server.wait_finished(new_run)

    shown = aob("run", "status", new_run)
    row = node_row(shown.out, "ok")
    assert row[:3] == ["ok", "noop", "completed"]
    assert f"carried over from {run_id}" in shown.out
    assert node_row(shown.out, "boom")[:3] == ["boom", "transform", "failed"]
    nodes = aob("run", "status", new_run, "-o", "json").json()["nodes"]
    assert {n["node_id"]: n["carried_from"] for n in nodes} == {"ok": run_id, "boom": None}


def test_a_failure_says_why_it_was_not_retried(aob: Cli, write_json: Any) -> None:
    followed = aob("run", "start", str(write_json("failing.json", FAILING)), "-f")
    assert followed.code == 1
    failed = next(line for line in followed.out.splitlines() if " failed (attempt 1)" in line)
    assert "; not retried: jq errors are deterministic" in failed


def test_run_list_names_inline_definitions(aob: Cli, server: LiveServer, write_json: Any) -> None:
    run_id = json.loads(
        aob("run", "start", str(write_json("q.json", QUICK)), "--input", "x=1", "-o", "json").out
    )["run_id"]
    listing = aob("run", "list", "--limit", "50")
    row = next(line for line in listing.out.splitlines() if line.startswith(run_id))
    assert row.split()[2:4] == ["quick", "(inline)"]


def test_a_patch_awaiting_review_says_how_to_decide_it_and_events_read_as_words(
    agent_server: LiveServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    aob = Cli(home, agent_server.url)
    (tmp_path / "a.json").write_text(json.dumps(reviewed("plan A")), encoding="utf-8")
    run_id = aob("run", "start", str(tmp_path / "a.json"), "-o", "json").json()["run_id"]
    patch_id = pending_patch(agent_server, run_id)["patch_id"]
    wait_for(lambda: agent_server.run(run_id)["status"] == "waiting", "the run waiting")

    shown = aob("run", "status", run_id)
    assert f"waiting for patch review {patch_id} (from agent node plan): notify ops" in shown.out
    assert f"aob patch show {patch_id} --run {run_id}" in shown.out
    command = f'aob patch approve|reject {patch_id} --run {run_id} --reason "..."'
    assert command in shown.out
    as_json = aob("run", "status", run_id, "-o", "json").json()
    assert [p["review_command"] for p in as_json["pending_patch_reviews"]] == [command]

    rejected = aob("patch", "reject", patch_id, "--run", run_id, "--reason", "Need validation")
    assert rejected.code == 0, rejected.err
    agent_server.wait_finished(run_id)
    logs = aob("logs", "stream", run_id)
    assert (
        f"patch {patch_id} awaits review: aob patch approve {patch_id} --run {run_id}" in logs.out
    )
    assert re.search(rf"patch {patch_id} rejected in review by \S+: Need validation", logs.out)
    assert re.search(r"agent used \S+: \d+ LLM calls?, \d+ tokens", logs.out)
    for raw in ("agent_usage_recorded", "patch_reviewed", "patch_review_requested"):
        assert raw not in logs.out


def test_a_decided_approval_reads_as_decided() -> None:
    """`aob run status` showed a decided approval as pending ones read: "approved by
    alice ...: 0 of 1 approvals", "cancelled by None", a quorum's "; or signal paid"."""
    from aob.cli.render import Style
    from aob.cli.runs import format_run

    def status_with(approval: dict[str, Any]) -> str:
        run = {"run_id": "run_x", "status": "completed", "approvals": [approval]}
        base = {"approval_id": "a1", "node_id": "gate", "decided_at": None}
        return format_run(Style(False), {**run, "approvals": [{**base, **approval}]})

    single = status_with({"status": "approved", "decided_by": "alice", "votes": []})
    assert "approval a1 (node gate) approved by alice at" in single
    assert "approvals" not in single.split("approval a1", 1)[1]
    cancelled = status_with({"status": "cancelled", "decided_by": None})
    assert "cancelled at" in cancelled
    assert "None" not in cancelled
    votes = [
        {"voter": "ann", "decision": "approve"},
        {"voter": "bob", "decision": "approve"},
    ]
    quorum = status_with(
        {
            "status": "approved",
            "decided_by": "system:quorum",
            "votes": votes,
            "policy": {"quorum": 2, "signals": ["paid"]},
            "comments": "ann: ok",
        }
    )
    assert "approved by system:quorum" in quorum
    assert "2 of 2 approvals (ann, bob); why: ann: ok" in quorum
    assert "or signal" not in quorum
