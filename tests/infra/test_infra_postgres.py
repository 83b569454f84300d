"""The throwaway PostgreSQL server: its CLI, its settings, its clean-up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from aob.infra.postgres import PostgresServer
from tests.fixtures.postgres import run_blocking, with_search_path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aob.infra.postgres", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def _settings(dsn: str, *names: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [await conn.fetchval("SELECT current_setting($1)", name) for name in names]
    finally:
        await conn.close()


def test_cli_start_prints_a_dsn_and_stop_removes_everything():
    # As documented (`mktemp -d`); not tmp_path, which root's server user cannot reach.
    home = Path(tempfile.mkdtemp(prefix="aob-test-"))
    started = _cli("start", "--dir", str(home), "--no-fsync")
    assert started.returncode == 0, started.stderr
    dsn = started.stdout.strip()
    assert started.stdout.count("\n") == 1  # the DSN alone, so `$(...)` captures it
    assert dsn.startswith("postgresql://aob:")
    port = urlsplit(dsn).port
    assert port is not None
    try:
        assert f"stop --dir {home}" in started.stderr
        assert run_blocking(_settings(dsn, "fsync", "listen_addresses", "server_encoding")) == [
            "off",
            "127.0.0.1",
            "UTF8",
        ]
        wrong = dsn.replace(str(urlsplit(dsn).password), "wrong")
        with pytest.raises(asyncpg.InvalidPasswordError):
            run_blocking(asyncpg.connect(wrong))
    finally:
        stopped = _cli("stop", "--dir", str(home))
    assert stopped.returncode == 0, stopped.stderr
    assert not home.exists()
    assert not _listening(port)


async def test_fsync_stays_on_unless_asked():
    with PostgresServer.start() as server:
        assert await _settings(server.dsn, "fsync", "synchronous_commit") == ["on", "on"]
        assert server.running()
    assert not server.directory.exists()
    assert not _listening(server.port)


def test_cli_errors_are_one_line(tmp_path: Path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    refused = _cli("start", "--dir", str(tmp_path / "busy"))
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.strip().count("\n") == 0
    assert "is not empty" in refused.stderr
    if os.geteuid() == 0:
        closed = _cli("start", "--dir", str(tmp_path / "closed"))
        assert (closed.returncode, closed.stdout) == (1, "")
        assert "cannot reach" in closed.stderr
        assert not (tmp_path / "closed").exists()
    unknown = _cli("stop", "--dir", str(tmp_path / "nothing"))
    assert unknown.returncode == 1
    assert "no server was started" in unknown.stderr


def test_search_path_is_added_to_a_dsn_once():
    dsn = "postgresql://u:p@h:5/db?sslmode=disable&search_path=old"
    assert with_search_path(dsn, "fresh") == (
        "postgresql://u:p@h:5/db?sslmode=disable&search_path=fresh"
    )
    assert with_search_path("postgresql://h/db", "s") == "postgresql://h/db?search_path=s"
