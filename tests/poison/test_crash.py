"""A host task that dies turns /health to 503 and makes `aob server dev` exit non-zero,
so that a supervisor restarts it: a service never goes on half-working."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aob.platform.serve import EXIT_HOST_DIED
from aob.projections.runtime.timers import TimerService
from tests.poison.harness import engine


async def broken(self: TimerService, stop: object) -> None:
    raise RuntimeError("timer bug")


async def test_a_dead_host_makes_health_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TimerService, "run", broken)
    async with engine(tmp_path) as aob:
        await aob.engine.died.wait()
        response = await aob.client.get("/health")
        assert response.status_code == 503
        assert "timer bug" in response.json()["dependencies"]["hosts"]


def test_a_dead_host_makes_the_dev_server_exit_non_zero(tmp_path: Path) -> None:
    """The real `aob server dev` entry point, with the timer host made to crash."""
    script = textwrap.dedent(
        f"""
        import sys
        from aob.projections.runtime.timers import TimerService

        async def broken(self, stop):
            raise RuntimeError("timer bug")

        TimerService.run = broken
        from aob.platform.__main__ import main
        sys.exit(main(["dev", "--data-dir", {str(tmp_path / "data")!r}, "--port", "0"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == EXIT_HOST_DIED, done.stderr
    assert "a host died" in done.stderr
    assert "timer bug" in done.stderr
    assert "listening on" in done.stdout  # it did serve first
