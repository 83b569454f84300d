"""`aob approvals list`: the caller's tenant's pending approvals, each with the exact
command that decides it; `-o json` for scripts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.cli.conftest import Cli
from tests.cli.test_views import GATED
from tests.fanout.live import LiveServer


def create_token(data: Path, name: str, tenant: str) -> str:
    auth = [sys.executable, "-m", "aob.platform.auth", "--data-dir", str(data)]
    roles = ["--role", "operator", "--role", "approver"]
    created = subprocess.run(
        [*auth, "create", name, *roles, "--tenant", tenant, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    token: str = json.loads(created.stdout)["token"]
    return token


def pending(aob: Cli, token: str, expected: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = aob("approvals", "list", "-o", "json", env={"AOB_TOKEN": token})
        assert listed.code == 0, listed.err
        items: list[dict[str, Any]] = listed.json()["items"]
        if len(items) >= expected:
            return items
        time.sleep(0.05)
    raise AssertionError(f"fewer than {expected} pending approvals within 20 s")


def test_pending_approvals_of_the_callers_tenant_with_the_command(tmp_path: Path) -> None:
    data = tmp_path / "data"
    acme, globex = create_token(data, "ann", "acme"), create_token(data, "gus", "globex")
    live = LiveServer(data, env={"AOB_AUTH": "tokens"}).start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        aob = Cli(home, live.url)
        (tmp_path / "gated.json").write_text(json.dumps(GATED), encoding="utf-8")
        runs = {}
        for tenant, token in (("acme", acme), ("globex", globex)):
            started = aob(
                "run", "start", str(tmp_path / "gated.json"), "-o", "json", "--token", token
            )
            assert started.code == 0, started.err
            runs[tenant] = started.json()["run_id"]

        [mine] = pending(aob, acme, 1)
        assert mine["run_id"] == runs["acme"]  # not globex's
        command = f'aob approve {mine["approval_id"]} approve|reject --reason "..."'
        assert mine["decide_command"] == command

        table = aob("approvals", "list", env={"AOB_TOKEN": acme})
        header, row = table.out.splitlines()[:2]
        assert header.split() == [
            "APPROVAL", "STATUS", "RUN", "NODE", "REQUESTED", "DEADLINE", "MESSAGE",
        ]  # fmt: skip
        assert row.split()[:4] == [mine["approval_id"], "pending", runs["acme"], "gate"]
        assert row.endswith("Ship it?")
        assert f"  {command}" in table.out.splitlines()
        assert runs["globex"] not in table.out

        decided = aob("approve", mine["approval_id"], "approve", env={"AOB_TOKEN": acme})
        assert decided.code == 0, decided.err
        assert aob("approvals", "list", env={"AOB_TOKEN": acme}).out.strip() == (
            "no pending approvals"
        )
        any_status = aob("approvals", "list", "--status", "any", "--run", runs["acme"])
        assert any_status.code == 3  # no token: refused, in one line
        shown = aob("approvals", "list", "--status", "any", "--run", runs["acme"], "--token", acme)
        assert shown.out.splitlines()[1].split()[:2] == [mine["approval_id"], "approved"]
        assert "aob approve" not in shown.out  # nothing left to decide
    finally:
        live.stop()
