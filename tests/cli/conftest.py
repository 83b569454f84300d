"""Drive `aob` as a user would: a subprocess against a live dev server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fanout.live import LiveServer

REPO = Path(__file__).parents[2]
AOB = [sys.executable, "-m", "aob.cli.main"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


class Cli:
    """Runs `aob` with a clean environment: a home of its own, the server's address."""

    def __init__(self, home: Path, server: str) -> None:
        self.home = home
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AOB_") and k not in {"NO_COLOR", "FORCE_COLOR", "XDG_CONFIG_HOME"}
        }
        self.env.update({"HOME": str(home), "AOB_SERVER": server})

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> Result:
        done = subprocess.run(
            [*AOB, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env={**self.env, **(env or {})},
        )
        assert "Traceback" not in done.stderr, done.stderr
        return Result(done.returncode, done.stdout, done.stderr)

    def shell(self, script: str, cwd: Path, timeout: float = 60) -> Result:
        """A shell line as in the docs, with `aob` on the PATH."""
        env = {**self.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}"}
        done = subprocess.run(
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=env,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return Result(done.returncode, done.stdout, done.stderr)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """The CLI as a foreground command, which Ctrl-C (SIGINT) interrupts."""
        return subprocess.Popen(
            [*AOB, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=self.env,
            preexec_fn=_interruptible,
        )


def _interruptible() -> None:
    """In the child before exec: SIGINT back to its default. A suite started in the
    background by a non-interactive shell (`pytest ... &`) ignores SIGINT, children
    inherit that, and Python then installs no KeyboardInterrupt handler: a test's
    Ctrl-C would be ignored and the command would never end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("cli") / "data").start()
    yield live
    live.stop()


@pytest.fixture
def aob(server: LiveServer, tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return Cli(home, server.url)


@pytest.fixture
def write_json(tmp_path: Path):
    def write(name: str, value: Any) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(value), encoding="utf-8")
        return path

    return write


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A dev server of the test's own, for tests that stop or restart it."""
    live = LiveServer(tmp_path / "data").start()
    yield live
    live.stop()
