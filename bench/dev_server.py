"""`aob server dev` in a subprocess on a free port, for benchmarks that act as clients."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def dev_server(extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Yields the server's base URL; stops the server and removes its data after."""
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
        # A benchmark is its own client: no credentials, no rate limits in the way.
        env = {**os.environ, "AOB_AUTH": "off", "AOB_RATE_LIMIT": "false", **(extra_env or {})}
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.search(r"listening on (http://\S+)", line)
            if not match:
                raise RuntimeError(f"the dev server did not start: {line!r}")
            yield match.group(1)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
