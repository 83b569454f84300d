"""`aob server dev` with authentication on: creates a local admin token, prints how to
use it, runs its demo workflow with it, and keeps the same token across restarts."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "examples" / "countdown.yaml"


def dev_server(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AOB_AUTH": "tokens", "AOB_LOG_FORMAT": "json"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "aob.platform",
            "dev",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--run",
            str(EXAMPLE),
            "--exit",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        check=False,
    )


@pytest.mark.slow
def test_the_first_run_stays_one_command(tmp_path: Path) -> None:
    first = dev_server(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    found = re.search(r"export AOB_TOKEN=(aob_\S+)", first.stdout)
    assert found, first.stdout
    assert "Authorization: Bearer $AOB_TOKEN" in first.stdout
    assert "completed" in first.stdout  # the demo ran with the token
    saved = tmp_path / "admin-token"
    assert saved.read_text().strip() == found[1]
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    second = dev_server(tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"export AOB_TOKEN={found[1]}" in second.stdout  # the same token
