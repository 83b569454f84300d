"""`aob workflow validate` and `aob run start` on the mistakes people make with node
types and their configs, as a user types them, against a live dev server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tests.fanout.live import LiveServer

TYPO = """\
name: order
nodes:
  - id: charge
    type: htpp
    config: {url: "http://127.0.0.1:9/charge", method: POST}
  - id: receipt
    type: noop
    config: {output: sent}
edges:
  - {from: charge, to: receipt}
"""
BAD_HTTP = """\
name: refused-order
nodes:
  - id: charge
    type: http
    config: {url: "ftp://files.example.com", methd: POST, timeout_ms: soon}
"""
NODEZ = """\
name: order
nodez:
  - {id: a, type: noop}
  - {id: b, type: noop}
  - {id: c, type: noop}
edges:
  - {from: a, to: b}
  - {from: b, to: c}
  - {from: a, to: c}
"""
SUGGESTION = "unknown node type 'htpp' (did you mean 'http'?)"


@pytest.fixture
def workflows(tmp_path: Path) -> Path:
    for name, text in {"typo.yaml": TYPO, "bad-http.yaml": BAD_HTTP, "nodez.yaml": NODEZ}.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_validate_warns_about_a_misspelled_type_and_exits_0(aob: Cli, workflows: Path) -> None:
    result = aob("workflow", "validate", str(workflows / "typo.yaml"))
    assert result.code == 0, result.err
    assert result.out.strip().endswith("typo.yaml: valid")
    [warning] = result.err.splitlines()
    assert f"typo.yaml: warning: /nodes/0/type: {SUGGESTION}" in warning
    assert "AOB_UNKNOWN_NODE_TYPES=error" in warning


def test_validate_as_json_carries_the_warnings(aob: Cli, workflows: Path) -> None:
    result = aob("-o", "json", "workflow", "validate", str(workflows / "typo.yaml"))
    assert result.code == 0, result.err
    document = result.json()
    assert document["valid"] is True
    [warning] = document["warnings"]
    assert warning["path"] == "/nodes/0/type"
    assert warning["message"].startswith(SUGGESTION)


def test_a_run_with_the_typo_warns_at_submit_and_its_skip_names_the_type_meant(
    aob: Cli, workflows: Path
) -> None:
    result = aob("run", "start", str(workflows / "typo.yaml"), "-f")
    assert result.code == 0, result.err  # the seed's semantics: skipped, the rest runs
    assert f"warning: /nodes/0/type: {SUGGESTION}" in result.err
    assert f"charge            skipped: {SUGGESTION} [warning]" in result.out
    assert result.out.rstrip().endswith(": completed")
    run_id = result.out.split()[1]
    status = aob("-o", "json", "run", "status", run_id).json()
    nodes = {node["node_id"]: node for node in status["nodes"]}
    assert nodes["charge"]["status"] == "skipped"
    assert nodes["charge"]["skip_reason"] == SUGGESTION
    assert nodes["receipt"]["status"] == "completed"


def test_a_bad_http_config_is_refused_with_each_path_and_exit_2(aob: Cli, workflows: Path) -> None:
    for command in (["workflow", "validate"], ["run", "start"]):
        result = aob(*command, str(workflows / "bad-http.yaml"))
        assert result.code == 2, (command, result.err)
        assert result.err.splitlines()[1:] == [
            "  /nodes/0/config: 'methd' was unexpected: did you mean 'method'?",
            "  /nodes/0/config/timeout_ms: 'soon' is not an integer >= 1 or a {{ jq }} template",
            "  /nodes/0/config/url: 'ftp://files.example.com' is not an http:// or https:// "
            "URL or a {{ jq }} template",
        ], command
    assert "refused-order" not in aob("run", "list").out  # nothing was submitted


def test_a_misspelled_field_is_one_problem_with_a_suggestion(aob: Cli, workflows: Path) -> None:
    result = aob("workflow", "validate", str(workflows / "nodez.yaml"))
    assert result.code == 2
    assert result.err.splitlines() == [
        "aob: the workflow definition has 1 problem",
        "  /: 'nodez' was unexpected: did you mean 'nodes'?",
    ]


@pytest.fixture
def strict_server(tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "strict", env={"AOB_UNKNOWN_NODE_TYPES": "error"}).start()
    yield live
    live.stop()


def test_unknown_types_are_refused_where_the_setting_says_error(
    strict_server: LiveServer, workflows: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    strict = Cli(home, strict_server.url)
    for command in (["workflow", "validate"], ["run", "start"]):
        result = strict(*command, str(workflows / "typo.yaml"))
        assert result.code == 2, (command, result.err)
        assert f"/nodes/0/type: {SUGGESTION}" in result.err
        assert "AOB_UNKNOWN_NODE_TYPES=error refuses it" in result.err
    assert strict("-o", "json", "run", "list").json()["items"] == []
