"""Walk the README top to bottom on a fresh data dir, running its shell lines in order.

Every line of every ```sh block must be claimed by one step below, in README order, so
a new command in the README cannot go unwalked. Each `aob ...` line runs for real, as
written, against a live dev server; only placeholders (RUN_ID, APPROVAL_ID, PATCH_ID),
the demo LLM's port and the data dir are replaced. Steps that would run the whole
suite, a Kafka cluster or the benchmarks are not run here, and say which test does.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.cli.conftest import REPO, Cli, Result
from tests.fanout.live import FAILING, LiveServer, eventually
from tests.test_examples import answers, free_port

BIN = Path(sys.executable).parent
README = (REPO / "README.md").read_text(encoding="utf-8")
GATE = {"name": "gate", "nodes": [{"id": "gate", "type": "hitl", "config": {"message": "Go?"}}]}


def readme_lines() -> list[str]:
    return [
        line.strip()
        for block in re.findall(r"```sh\n(.*?)```", README, re.S)
        for line in block.splitlines()
        if line.strip() and not line.lstrip().startswith("#")  # comments are for people
    ]


@dataclass
class Walk:
    """What the walk has made so far: the server, the CLI, the ids the README names."""

    tmp: Path
    data_dir: Path
    server: LiveServer | None = None
    cli: Cli | None = None
    ids: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # what the README exports
    failed: str = ""  # a failed run, for `aob run list --status failed`
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def shell(self, line: str, env: dict[str, str] | None = None) -> Result:
        cli = self.cli or Cli(self.tmp, "http://127.0.0.1:9")
        for name, value in self.ids.items():
            line = line.replace(name, value)
        script = line.replace(".venv/bin/", f"{BIN}/")
        exports = "".join(f"export {k}={v!r}; " for k, v in (env or {}).items())
        return cli.shell(exports + script, cwd=REPO, timeout=300)


def _ok(result: Result, *texts: str) -> None:
    assert result.code == 0, result.out + result.err
    for text in texts:
        assert text in result.out, (text, result.out)


# --- the steps, in README order ----------------------------------------------------------


def install_and_first_run(walk: Walk, line: str) -> None:
    # The venv and the install are what this suite runs in: `aob` must be where the
    # README says (tests/cli/test_errors.py checks the rest); the server part runs here.
    assert (BIN / "aob").exists()
    first = line.split(" && ")[-1].replace("--data-dir .aob", f"--data-dir {walk.tmp / 'first'}")
    _ok(walk.shell(first), "completed")


def whole_suite(walk: Walk, line: str) -> None:
    # The suite itself: this test is part of it.
    assert os.access(REPO / line, os.X_OK)


def demo_llm(walk: Walk, line: str) -> None:
    port = free_port()
    walk.ids["8808"] = str(port)
    command = line.rstrip("&").strip().replace("8808", str(port)).split()
    command[0] = sys.executable
    walk.background.append(subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL))
    eventually(lambda: answers(f"http://127.0.0.1:{port}/v1/models"), "the demo LLM")


def agent_run(walk: Walk, line: str) -> None:
    line = line.replace("--data-dir .aob", f"--data-dir {walk.tmp / 'agent'}")
    _ok(walk.shell(line), "follow-up", "completed")


def dev_server(walk: Walk, line: str) -> None:
    # The scripted LLM of examples/patch-review.yaml, for the patch review below.
    port = free_port()
    script = ["--script", "examples/patch-review.llm.json", "--port", str(port)]
    command = [sys.executable, "-m", "aob.workers.agent.demo_llm", *script]
    walk.background.append(subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL))
    llm = f"http://127.0.0.1:{port}/v1"
    eventually(lambda: answers(f"{llm}/models"), "the patch review's LLM")
    # `aob server dev`, in a subprocess, on the walk's fresh data dir.
    walk.server = LiveServer(walk.data_dir, env={"AOB_LLM_BASE_URL": llm}).start()
    home = walk.tmp / "home"
    home.mkdir()
    walk.cli = Cli(home, walk.server.url)
    server = walk.server
    # What the following lines act on: a run to cancel, an approval, a patch under review.
    walk.failed = server.submit(FAILING)
    walk.ids["CANCEL_ME"] = server.submit(GATE)
    server.wait_finished(walk.failed)


def run_start(walk: Walk, line: str) -> None:
    result = walk.shell(line)
    _ok(result, "run completed")
    walk.ids["RUN_ID"] = result.out.split()[1]


def run_status(walk: Walk, line: str) -> None:
    _ok(walk.shell(line), "completed", "normalise")


def run_list(walk: Walk, line: str) -> None:
    result = walk.shell(line)
    _ok(result, walk.failed)
    assert walk.ids["RUN_ID"] not in result.out  # it completed


def run_cancel(walk: Walk, line: str) -> None:
    result = walk.shell(line.replace("RUN_ID", walk.ids["CANCEL_ME"]))
    _ok(result, "cancelling")


def logs_stream(walk: Walk, line: str) -> None:
    _ok(walk.shell(line), ": completed")


def run_start_gate(walk: Walk, line: str) -> None:
    result = walk.shell(line)
    _ok(result)
    found = re.search(r"run_\w+", result.out)
    assert found is not None, result.out
    walk.ids["WAITING"] = found.group(0)
    assert walk.server is not None
    walk.server.wait_status(walk.ids["WAITING"], ("waiting",))


def approver_token(walk: Walk, line: str) -> None:
    # Its own shell here: the token it exports is handed to the lines after it.
    name, _, command = line.removeprefix("export ").partition("=$(")
    result = walk.shell(command.removesuffix(")"), env={"AOB_DATA_DIR": str(walk.data_dir)})
    _ok(result)
    walk.env[name] = result.out.strip()
    assert walk.env[name].startswith("aob_"), result.out


def approvals_list(walk: Walk, line: str) -> None:
    assert walk.server is not None
    with walk.server.client() as client:
        approvals = client.get("/api/v1/approvals").json()["items"]
    [approval] = [a for a in approvals if a["run_id"] == walk.ids["WAITING"]]
    walk.ids["APPROVAL_ID"] = approval["approval_id"]
    _ok(walk.shell(line), f"aob approve {approval['approval_id']}")


def approve(walk: Walk, line: str) -> None:
    # The suite's servers run with AOB_AUTH=off (tests/conftest.py), where the actor the
    # CLI names stands in for the token's principal: alice, as $ALICE would make her.
    _ok(walk.shell(line, env={**walk.env, "AOB_ACTOR": "alice"}), "approved")
    assert walk.server is not None
    assert walk.server.wait_finished(walk.ids["WAITING"])["status"] == "completed"


def patch_review(walk: Walk, line: str) -> None:
    assert walk.server is not None
    # An agent's patch under review: examples/patch-review.yaml, its scripted LLM.
    definition = yaml.safe_load((REPO / "examples" / "patch-review.yaml").read_text())
    run_id = walk.server.submit(definition, {"order": "o-7"})
    walk.server.wait_status(run_id, ("waiting",))
    with walk.server.client() as client:
        [patch] = client.get(f"/api/v1/runs/{run_id}/patches").json()["items"]
    walk.ids["PATCH_ID"] = patch["patch_id"]
    result = walk.shell(line.replace("RUN_ID", run_id))
    _ok(result, patch["patch_id"], "escalate")
    assert walk.server.wait_finished(run_id)["output"]["escalated"] == "escalated o-7"


def replay(walk: Walk, line: str) -> None:
    result = walk.shell(line)
    _ok(result)
    assert walk.server is not None
    new_run = re.search(r"run_\w+", result.out.replace(walk.ids["RUN_ID"], ""))
    assert new_run is not None, result.out
    assert walk.server.wait_finished(new_run.group(0))["status"] == "completed"


def validate_and_list(walk: Walk, line: str) -> None:
    _ok(walk.shell(line), "countdown.yaml: valid")


def cluster(walk: Walk, line: str) -> None:
    # A Kafka cluster, PostgreSQL and one process per service: tests/cluster_services
    # starts exactly these (`aob server api|coordinator|...`); the audit lines below
    # run here, on the walk's embedded log.
    assert (REPO / "tests" / "cluster_services").is_dir()


def audit(walk: Walk, line: str) -> None:
    if walk.server is not None:
        walk.server.stop(signal.SIGTERM)  # the embedded log has one owner at a time
        walk.server = None
    for process in walk.background:
        process.terminate()
        process.wait(timeout=10)
    walk.background.clear()
    result = walk.shell(line, env={"AOB_DATA_DIR": str(walk.data_dir)})
    _ok(result, "NodeCompleted" if "history" in line else "")


def not_walked(walk: Walk, line: str) -> None:
    # Parts of the suite (tests/e2e, ruff and mypy in CI) and benchmarks (tests/bench).
    assert line.startswith(".venv/bin/")


STEPS: list[tuple[str, Callable[[Walk, str], None]]] = [
    (r"python3 -m venv \.venv && ", install_and_first_run),
    (r"infra/test$", whole_suite),
    (r".*demo_llm --port 8808 &$", demo_llm),
    (r"AOB_LLM_BASE_URL=.*agent-triage\.yaml --exit$", agent_run),
    (r"aob server dev\b(?! --)", dev_server),
    (r"aob run start examples/order-triage\.yaml", run_start),
    (r"aob run status RUN_ID$", run_status),
    (r"aob run list --status failed$", run_list),
    (r"aob run cancel RUN_ID$", run_cancel),
    (r"aob logs stream RUN_ID", logs_stream),
    (r"aob run start examples/approval-gate\.yaml", run_start_gate),
    (r"aob approvals list\b", approvals_list),
    (r"export ALICE=\$\(python -m aob\.platform\.auth create alice", approver_token),
    (r"aob approve APPROVAL_ID approve", approve),
    (
        r"aob patch list RUN_ID && aob patch show PATCH_ID && aob patch approve PATCH_ID",
        patch_review,
    ),
    (r"aob replay RUN_ID --from-event 12$", replay),
    (r"aob workflow validate examples/countdown\.yaml && aob workflow list$", validate_and_list),
    (r"export AOB_(KAFKA_BOOTSTRAP|DATABASE_URL)=", cluster),
    (
        r"aob server (api|coordinator|projector|workers|fanout) &"
        r"|export AOB_TOKEN=\$\(\.venv/bin/python -m aob\.platform\.auth create ",
        cluster,
    ),
    (r"aob server audit (verify|history RUN_ID)\b", audit),
    (r"\.venv/bin/(pytest|ruff|python -m bench\.)", not_walked),
]


# The whole README in one test (a dozen commands, two servers): past the suite's 120 s
# default on a loaded shared machine. A deadline, not a measurement.
@pytest.mark.timeout(600)
def test_the_readme_walks_top_to_bottom(tmp_path: Path) -> None:
    walk = Walk(tmp_path, tmp_path / "data")
    lines = readme_lines()
    assert len(lines) > 20
    last = -1
    try:
        for line in lines:
            command = line.split("  #")[0].strip()
            matched = [i for i, (pattern, _) in enumerate(STEPS) if re.match(pattern, command)]
            assert len(matched) == 1, f"no single step walks {command!r}: {matched}"
            assert matched[0] >= last, f"{command!r} is out of the README's order"
            last = matched[0]
            STEPS[matched[0]][1](walk, command)
    finally:
        if walk.server is not None:
            walk.server.stop()
        for process in walk.background:
            process.terminate()
            process.wait(timeout=10)
