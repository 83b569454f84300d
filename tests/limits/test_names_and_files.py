"""Names ending in a newline are refused (`\\Z`, not `$`), and `aob workflow validate`
refuses a YAML alias bomb with one line and exit code 2, at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aob.platform.auth.principal import check_name, check_roles, check_tenant
from aob.projections.workflow.definition import validate_definition

AOB = [sys.executable, "-m", "aob.cli.main"]


@pytest.mark.parametrize(
    ("check", "name"),
    [(check_name, "alice\n"), (check_tenant, "acme\n"), (lambda r: check_roles([r]), "admin\n")],
)
def test_names_ending_in_a_newline_are_refused(check, name):
    check(name.strip())
    with pytest.raises(ValueError, match="bad"):
        check(name)


def test_workflow_and_node_ids_ending_in_a_newline_are_refused():
    doc = {"name": "w\n", "nodes": [{"id": "a\n", "type": "noop"}]}
    assert [p.path for p in validate_definition(doc)] == ["/name", "/nodes/0/id"]


BOMB = "\n".join(
    [
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(
            f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "name: bomb",
        "nodes: [{id: a, type: noop}]",
        "",
    ]
)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "AOB_SERVER": "http://127.0.0.1:9"}
    return subprocess.run(
        [*AOB, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (BOMB, "more than 1000000 values once YAML aliases are expanded"),
        (
            "name: loop\nnodes: &x [*x]\n",
            "a YAML alias refers to a value that contains it (an endless document)",
        ),
    ],
)
def test_yaml_alias_bombs_are_refused_with_one_line_and_exit_2(tmp_path, text, says):
    (tmp_path / "bomb.yaml").write_text(text)
    started = _children_cpu()
    result = run_cli("workflow", "validate", "bomb.yaml", cwd=tmp_path)
    assert _children_cpu() - started < 10  # CPU seconds: the bomb expands to 9^9 strings
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"aob: bomb.yaml: {says}"]
    assert "Traceback" not in result.stderr


def test_shared_yaml_anchors_within_the_budget_still_load(tmp_path):
    """Anchors are fine: only their expansion is bounded (the server is not reached:
    the file is read and sent, and the refusal is about the connection)."""
    text = "name: ok\nbase: &b {type: noop}\nnodes: [{id: a, <<: *b}, {id: b, <<: *b}]\n"
    (tmp_path / "ok.yaml").write_text(text)
    result = run_cli("workflow", "validate", "ok.yaml", cwd=tmp_path)
    assert "YAML" not in result.stderr
    assert result.returncode == 4, result.stderr  # unreachable server, not a file error


def _children_cpu() -> float:
    """CPU seconds used by this process's waited-for children (the CLI) so far: the
    work done, which a loaded machine does not inflate as it does wall time."""
    times = os.times()
    return times.children_user + times.children_system
