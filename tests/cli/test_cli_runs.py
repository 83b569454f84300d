"""`aob run ...`, `aob logs stream`, `aob workflow ...` as a user types them."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import AOB, REPO, Cli
from tests.fanout.live import FAILING, HELD, QUICK, LiveServer

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def test_version(aob: Cli) -> None:
    result = aob("--version")
    assert result.code == 0
    assert re.fullmatch(r"aob \d+\.\d+\.\d+\n", result.out)


def test_run_start_follow_shows_every_node_and_exits_0(aob: Cli) -> None:
    result = aob(
        "run",
        "start",
        "examples/order-triage.yaml",
        "-f",
        "--inputs-file",
        "examples/order-triage.inputs.json",
    )
    assert result.code == 0, result.err
    for node in ["normalise", "value", "risk", "review", "fast-track", "summary"]:
        assert node in result.out
    assert "skipped: no incoming edge was taken" in result.out
    assert "run completed" in result.out
    assert result.out.rstrip().splitlines()[-1].endswith(": completed")
    assert "\x1b[" not in result.out  # not a terminal: no colour


def test_a_failed_run_exits_1_when_followed(aob: Cli, write_json) -> None:
    workflow = write_json("failing.json", FAILING)
    result = aob("run", "start", str(workflow), "-f")
    assert result.code == 1
    assert "boom" in result.out
    assert result.out.rstrip().endswith(": failed")


def test_seed_examples_for_scripting(aob: Cli, server: LiveServer, tmp_path: Path) -> None:
    (tmp_path / "workflow.json").write_text(json.dumps(QUICK), encoding="utf-8")
    started = aob.shell(
        "aob workflow validate workflow.json && aob run start workflow.json --input x=20\n"
        "RUN_ID=$(aob run start workflow.json --input x=41 --output json | jq -r '.run_id')\n"
        'echo "$RUN_ID"',
        cwd=tmp_path,
    )
    assert started.code == 0, started.err
    assert "workflow.json: valid" in started.out
    assert re.search(r"run run_\w+ accepted", started.out)
    run_id = started.out.split()[-1]
    server.wait_finished(run_id)  # a script would follow it: `aob run start ... -f`
    result = aob.shell(
        f"aob run status {run_id}; aob run status {run_id} --output json", cwd=tmp_path
    )
    assert result.code == 0, result.err
    status = json.loads(result.out[result.out.index("\n{") :])
    assert status["status"] == "completed"
    assert status["output"] == 84
    assert "output: 84" in result.out
    assert re.search(r"^a\s+transform\s+completed", result.out, re.MULTILINE)


def test_run_list_and_cancel(aob: Cli, server: LiveServer, write_json) -> None:
    held = json.loads(aob("run", "start", str(write_json("held.json", HELD)), "-o", "json").out)
    run_id = held["run_id"]
    server.wait_status(run_id, ("running",))
    listing = aob("run", "list", "--status", "running", "-o", "json").json()
    assert run_id in [r["run_id"] for r in listing["items"]]
    table = aob("run", "list", "--limit", "5")
    assert table.out.splitlines()[0].split() == ["RUN", "STATUS", "WORKFLOW", "SUBMITTED", "TOOK"]
    assert run_id in table.out

    cancelled = aob("run", "cancel", run_id, "--reason", "no longer needed")
    assert cancelled.code == 0
    assert cancelled.out.strip() == f"run {run_id}: cancelling"
    assert server.wait_finished(run_id)["status"] == "cancelled"
    again = aob("run", "cancel", run_id)
    assert again.code == 3
    assert again.err.strip() == f"aob: cannot cancel run {run_id!r}: it is cancelled"


def test_logs_stream_filters(aob: Cli, server: LiveServer) -> None:
    run_id = server.submit(FAILING)
    server.wait_finished(run_id)

    node = aob("logs", "stream", run_id, "--node", "ok", "-o", "json").lines()
    assert {m["node_id"] for m in node[:-2]} == {"ok"}
    assert [m["event"] for m in node[-2:]] == ["workflow_failed", "end"]

    errors = aob("logs", "stream", run_id, "--filter", "errors")
    assert errors.code == 1  # the run failed
    lines = errors.out.strip().splitlines()
    assert len(lines) == 3
    assert "boom" in lines[0]
    assert "run failed" in lines[1]
    assert lines[2] == f"run {run_id}: failed"


def test_workflow_create_list_show_and_start_by_tag(aob: Cli) -> None:
    created = aob("workflow", "create", "examples/countdown.yaml", "-o", "json").json()
    assert created["workflow_id"] == "countdown"
    assert created["tag"] == "countdown"
    listing = aob("workflow", "list")
    assert re.search(r"^countdown\s+\d+\s+\d+", listing.out, re.MULTILINE)
    assert f"countdown@{created['version']}" in listing.out
    shown = aob("workflow", "show", "countdown")
    assert "name: countdown" in shown.out
    assert "max_iterations: 10" in shown.out
    assert aob("workflow", "show", "countdown", "-o", "json").json()["definition"]["name"] == (
        "countdown"
    )
    run = aob("run", "start", "countdown", "--tag", "--input", "from=2", "-f")
    assert run.code == 0
    assert "liftoff" in run.out


def test_errors_are_one_line_with_documented_exit_codes(aob: Cli, tmp_path: Path) -> None:
    missing = aob("run", "status", "run_nope")
    assert (missing.code, missing.err) == (3, "aob: no run 'run_nope'\n")

    no_file = aob("run", "start", "nope.yaml")
    assert no_file.code == 2
    assert no_file.err.startswith("aob: cannot read nope.yaml")

    bad_input = aob("run", "start", "examples/countdown.yaml", "--input", "novalue")
    assert (bad_input.code, bad_input.err) == (2, "aob: --input 'novalue': expected KEY=VALUE\n")

    (tmp_path / "bad.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    bad_yaml = aob("workflow", "validate", str(tmp_path / "bad.yaml"))
    assert bad_yaml.code == 2
    assert "invalid YAML" in bad_yaml.err
    assert len(bad_yaml.err.splitlines()) == 1

    (tmp_path / "invalid.json").write_text(json.dumps({"name": "x", "nodes": []}))
    invalid = aob("workflow", "validate", str(tmp_path / "invalid.json"))
    assert invalid.code == 2  # invalid input, as `aob --help` documents
    assert invalid.err.startswith("aob: the workflow definition has 1 problem")
    assert "/nodes" in invalid.err

    gone = aob("run", "list", env={"AOB_SERVER": "http://127.0.0.1:9"})
    assert gone.code == 4
    assert gone.err.startswith("aob: cannot reach the aob server at http://127.0.0.1:9")

    usage = aob("run", "frobnicate")
    assert usage.code == 2


def test_the_live_view_redraws_node_states_on_a_terminal(server: LiveServer) -> None:
    """Under a pseudo-terminal: colour, and a block of node states redrawn in place."""
    leader, follower = pty.openpty()
    env = {**os.environ, "AOB_SERVER": server.url, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [*AOB, "run", "start", "examples/countdown.yaml", "-f"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=REPO,
        env=env,
    )
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=30) == 0
    text = output.decode()
    assert "\x1b[32m" in text  # green: completed
    assert "\x1b[J" in text  # the block is cleared and redrawn
    plain = ANSI.sub("", text)
    assert "── nodes:" in plain
    assert re.search(r"tick\s+completed", plain)
    assert "run completed" in plain


def test_the_cli_loads_no_server_code_and_only_what_a_command_needs(server: LiveServer) -> None:
    run_id = server.submit(QUICK, {"x": 1})
    env = {**os.environ, "AOB_SERVER": server.url}
    for args in (["--version"], ["run", "status", run_id]):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "aob.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            check=True,
        )
        imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
        heavy = {
            m
            for m in imported
            if m.split(".")[0]
            in {"httpx", "yaml", "fastapi", "pydantic", "uvicorn", "fastavro", "jsonpatch"}
        }
        server_code = {
            m
            for m in imported
            if m.startswith(("aob.platform", "aob.events", "aob.projections", "aob.workers"))
        }
        assert heavy == set(), args
        assert server_code == set(), args


def test_server_commands_hand_over_to_the_server(aob: Cli) -> None:
    result = aob("server", "dev", "--help")
    assert result.code == 0
    assert "--data-dir" in result.out
    assert result.out.startswith("usage: aob server dev")


def test_the_more_hint_repeats_every_option_given(aob: Cli, server: LiveServer) -> None:
    import shlex

    for _ in range(2):
        server.wait_finished(server.submit(FAILING))
    result = aob("run", "list", "--status", "failed", "--limit", "1")
    assert result.code == 0, result.err
    hint = result.out.splitlines()[-1]
    assert hint.startswith("more: aob run list --status failed --limit 1 --cursor "), hint
    following = aob(*shlex.split(hint.removeprefix("more: aob ")))
    assert following.code == 0, following.err
    rows = [line for line in following.out.splitlines() if line.startswith("run_")]
    assert len(rows) == 1, following.out
    assert " failed " in rows[0]
    first = result.out.splitlines()[1].split()[0]
    assert first not in following.out  # the next page, not the first again


def test_the_dead_letters_more_hint_keeps_the_limit(aob: Cli) -> None:
    from tests.cli.test_errors import serve

    page = {"items": [{"id": "dl_1", "service": "engine", "reason": "x"}], "next_cursor": "c 2"}
    for site in serve((200, "application/json", json.dumps(page))):
        result = aob("admin", "deadletters", "list", "--limit", "1", "--server", site)
        assert result.code == 0, result.err
        hint = result.out.splitlines()[-1]
        assert hint == f"more: aob admin deadletters list --server {site} --limit 1 --cursor 'c 2'"


def test_workflow_show_refuses_a_version_below_1(aob: Cli) -> None:
    created = aob("workflow", "create", "examples/countdown.yaml", "-o", "json").json()
    for version in ("0", "-1"):
        result = aob("workflow", "show", created["workflow_id"], "--version", version)
        assert result.code == 2, (result.out, result.err)
        assert result.out == ""  # not the tag's version
        assert result.err.splitlines()[-1].startswith(
            f"aob: argument --version: {version}: versions are numbered from 1"
        )
    shown = aob("workflow", "show", "countdown", "--version", str(created["version"]))
    assert shown.code == 0
    assert f"version {created['version']}" in shown.out
