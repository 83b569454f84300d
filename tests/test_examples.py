"""Every workflow in examples/ runs as its comments say, driven with `aob` as a user
would: a live dev server, the example site served by `python3 -m http.server`, the
scripted LLM endpoint started with `python -m aob.workers.agent.demo_llm`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import REPO, Cli
from tests.fanout.live import LiveServer, eventually

EXAMPLES = REPO / "examples"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


# How long a helper server may take to listen. Waiting is bounded by the process too:
# one that exits fails at once. On a loaded machine importing it alone takes seconds
# (a 20 s bound failed `-k quorum`, whose tests need neither helper, about once in 8).
START_S = 180.0


def serve(command: list[str], probe: str) -> Iterator[None]:
    """Run `command` until the test module ends, once `probe` answers 200."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        eventually(
            lambda: process.poll() is not None or answers(probe),
            f"{command[2]} listening",
            timeout=START_S,
        )
        assert process.poll() is None, f"{command[2]} exited with {process.returncode}"
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    url = f"http://127.0.0.1:{port}"
    yield from (
        url for _ in serve([*command, "--directory", "examples/site"], f"{url}/pages/1.json")
    )


@pytest.fixture(scope="module")
def llm() -> Iterator[str]:
    port = free_port()
    script = "examples/patch-review.llm.json"
    command = [sys.executable, "-m", "aob.workers.agent.demo_llm", "--port", str(port)]
    url = f"http://127.0.0.1:{port}/v1"
    yield from (url for _ in serve([*command, "--script", script], f"{url}/models"))


@pytest.fixture(scope="module")
def server(site: str, llm: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"AOB_HTTP_ALLOW": site.removeprefix("http://"), "AOB_LLM_BASE_URL": llm}
    live = LiveServer(tmp_path_factory.mktemp("examples") / "data", env=env).start()
    yield live
    live.stop()


@pytest.fixture
def aob(server: LiveServer, tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return Cli(home, server.url)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates_without_a_warning(aob: Cli, path: Path) -> None:
    result = aob("workflow", "validate", str(path))
    assert result.code == 0, result.err
    assert result.err == ""
    assert result.out.strip() == f"{path}: valid"


def started(aob: Cli, *args: str) -> str:
    result = aob("run", "start", *args, "-o", "json")
    assert result.code == 0, result.err
    run_id: str = result.json()["run_id"]
    return run_id


def test_http_order_fetches_from_the_local_site(aob: Cli, server: LiveServer, site: str) -> None:
    result = aob(
        "run", "start", "examples/http-order.yaml",
        "--inputs-file", "examples/http-order.inputs.json", "--input", f"base_url={site}", "-f",
    )  # fmt: skip
    assert result.code == 0, result.out + result.err
    assert result.out.rstrip().endswith(": completed")
    run_id = result.out.split()[1]
    run = server.run(run_id)
    assert run["output"] == {"order": "o-1", "status": 200, "route": "manual review"}


def test_paginate_loops_until_the_last_page(aob: Cli, server: LiveServer, site: str) -> None:
    run_id = started(aob, "examples/paginate.yaml", "--input", f"base_url={site}")
    run = server.wait_finished(run_id)
    assert run["status"] == "completed", run.get("error")
    assert run["output"] == {"items": ["o-1", "o-2", "o-3", "o-4", "o-5"]}
    loops = [e for e in server.events(run_id) if e["type"] == "NodeScheduled"]
    assert [e["data"]["iteration"] for e in loops if e["data"]["node_id"] == "fetch"] == [0, 1, 2]


@pytest.mark.parametrize(
    ("decision", "result"),
    [("approve", "paid 80 EUR to Ada"), ("reject", "refund refused: no receipt")],
)
def test_approval_gate_waits_for_a_person(
    aob: Cli, server: LiveServer, decision: str, result: str
) -> None:
    run_id = started(
        aob, "examples/approval-gate.yaml", "--input", "customer=Ada", "--input", "amount=80"
    )
    server.wait_status(run_id, ("waiting",))
    pending = aob("approvals", "list", "-o", "json").json()["items"]
    [approval] = [a for a in pending if a["run_id"] == run_id]
    assert approval["message"] == "Refund 80 EUR to Ada?"
    listed = aob("approvals", "list")
    assert f"aob approve {approval['approval_id']}" in listed.out
    decided = aob(
        "approve", approval["approval_id"], decision, "--reason", "no receipt", "--actor", "alice"
    )
    assert decided.code == 0, decided.err
    run = server.wait_finished(run_id)
    assert run["output"] == {"decision": decision, "by": "alice", "result": result}


def test_patch_review_applies_the_agents_patch_once_approved(aob: Cli, server: LiveServer) -> None:
    run_id = started(aob, "examples/patch-review.yaml", "--input", "order=o-7")
    server.wait_status(run_id, ("waiting",))
    patches = aob("patch", "list", run_id, "-o", "json").json()["items"]
    [patch] = patches
    assert patch["status"] == "proposed"  # valid, awaiting its review
    shown = aob("patch", "show", patch["patch_id"])
    assert "escalate" in shown.out
    approved = aob("patch", "approve", patch["patch_id"])
    assert approved.code == 0, approved.err
    run = server.wait_finished(run_id)
    assert run["status"] == "completed", run.get("error")
    assert run["output"]["escalated"] == "escalated o-7"
    assert "escalation" in json.dumps(run["output"]["answer"])


def _quorum_payment(aob: Cli, server: LiveServer) -> tuple[str, str]:
    run_id = started(
        aob, "examples/quorum-payment.yaml", "--input", "supplier=Acme", "--input", "amount=25000"
    )
    server.wait_status(run_id, ("waiting",))
    pending = aob("approvals", "list", "--run", run_id, "-o", "json").json()["items"]
    [approval] = pending
    return run_id, approval["approval_id"]


def test_quorum_payment_needs_two_of_three_votes(aob: Cli, server: LiveServer) -> None:
    run_id, approval_id = _quorum_payment(aob, server)
    first = aob("approve", approval_id, "approve", "--reason", "invoice ok", "--actor", "ann")
    assert first.code == 0, first.err
    assert "1 of 2 approvals (ann)" in first.out
    again = aob("approve", approval_id, "approve", "--actor", "ann")
    assert "your first vote stands" in again.out
    status = aob("run", "status", run_id)
    assert "waiting" in status.out
    assert "1 of 2 approvals (ann)" in status.out
    outsider = aob("approve", approval_id, "approve", "--actor", "mallory")
    assert outsider.code != 0
    assert "may not decide" in outsider.err
    assert aob("approve", approval_id, "approve", "--actor", "bob").code == 0
    run = server.wait_finished(run_id)
    assert run["output"] == {
        "won": "approval",
        "decision": "approve",
        "voters": ["ann", "bob"],
        "result": "paid 25000 EUR to Acme",
    }
    status = aob("run", "status", run_id)
    assert "approved by system:quorum" in status.out
    assert "2 of 2 approvals (ann, bob)" in status.out


def test_quorum_payment_ends_on_the_suppliers_signal(aob: Cli, server: LiveServer) -> None:
    run_id, _ = _quorum_payment(aob, server)
    sent = aob("run", "signal", run_id, "cancelled", "--data", '{"by": "supplier"}', "--key", "1")
    assert sent.code == 0, sent.err
    assert aob("run", "signal", run_id, "cancelled", "--data", "{}", "--key", "1").code == 0
    bad = aob("run", "signal", run_id, "cancelled", "--data", "{nope")
    assert bad.code == 2
    assert "--data is not JSON" in bad.err
    run = server.wait_finished(run_id)
    assert run["output"]["won"] == "signal"
    assert run["output"]["result"] == "cancelled by supplier"
    events = httpx.get(f"{server.url}/api/v1/runs/{run_id}/events").json()["items"]
    [signal] = [e for e in events if e["type"] == "SignalReceived"]  # the key made it once
    assert signal["data"]["payload"] == {"by": "supplier"}
