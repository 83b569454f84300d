"""`aob server dev` in a subprocess on a free port, for benchmarks that act as clients."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

START_TIMEOUT_LINES = 50  # lines of start-up output read before giving up on the token


@dataclass(frozen=True)
class DevServer:
    """A running dev server: where it listens, its admin token (None when
    authentication is off) and its process id (to profile it)."""

    url: str
    token: str | None
    pid: int

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@contextmanager
def dev_server(extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Yields the server's base URL (no authentication, no rate limits); stops the
    server and removes its data after."""
    with started_dev_server(extra_env, auth=False) as server:
        yield server.url


@contextmanager
def started_dev_server(
    extra_env: dict[str, str] | None = None, *, auth: bool = False
) -> Iterator[DevServer]:
    """A dev server on a fresh data dir, rate limits off; with `auth`, token
    authentication on (the default of `aob server dev`) and its admin token read from
    what the server prints."""
    with tempfile.TemporaryDirectory(prefix="aob-bench-") as data:
        command = [
            sys.executable,
            "-m",
            "aob.platform",
            "dev",
            "--data-dir",
            str(Path(data) / "data"),
            "--port",
            "0",
        ]
        # A benchmark is its own client: no rate limits in the way.
        env = {**os.environ, "AOB_AUTH": "tokens" if auth else "off", "AOB_RATE_LIMIT": "false"}
        env.update(extra_env or {})
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.search(r"listening on (http://\S+)", line)
            if not match:
                raise RuntimeError(f"the dev server did not start: {line!r}")
            token = _admin_token(process.stdout) if auth else None
            yield DevServer(match.group(1), token, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _admin_token(stdout: IO[str]) -> str:
    """The token from the `export AOB_TOKEN=...` line of the start-up banner."""
    for _ in range(START_TIMEOUT_LINES):
        line = stdout.readline()
        match = re.search(r"export AOB_TOKEN=(\S+)", line)
        if match:
            return match.group(1)
        if not line:
            break
    raise RuntimeError("the dev server printed no admin token")
