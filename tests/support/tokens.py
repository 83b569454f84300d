"""Tokens made as operators make them: the `python -m aob.platform.auth` command on a
server's own token store."""

from __future__ import annotations

import sys
from pathlib import Path


def operator_token_command(data_dir: Path, tenant: str) -> list[str]:
    """The command that makes `<tenant>-op`, an operator (and viewer) token of `tenant`,
    printed as JSON."""
    return [
        sys.executable,
        "-m",
        "aob.platform.auth",
        "--data-dir",
        str(data_dir),
        "create",
        f"{tenant}-op",
        "--role",
        "operator",
        "--role",
        "viewer",
        "--tenant",
        tenant,
        "--json",
    ]
