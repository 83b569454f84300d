"""`aob server ...` that cannot start says why in one line with a hint, no traceback,
and exits non-zero: each failure is provoked for real."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fanout.live import LiveServer

AOB_SERVER = [sys.executable, "-m", "aob.platform"]


def server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`aob server ARGS` with no AOB_ settings but `env`; its output."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AOB_")}
    return subprocess.run(
        [*AOB_SERVER, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The failure's only line on stderr (and the exit was non-zero)."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound once to pick it, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_port_in_use(tmp_path: Path, taken_port: int) -> None:
    done = server("dev", "--data-dir", str(tmp_path / "data"), "--port", str(taken_port))
    assert one_line(done) == f"aob: port {taken_port} in use; pass --port N"
    assert done.returncode == 1
    assert not (tmp_path / "data" / "log.db").exists()  # nothing was opened for nothing


def test_port_in_use_by_a_cluster_service(taken_port: int, closed_port: int) -> None:
    env = {
        "AOB_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port}",
        "AOB_DATABASE_URL": f"postgresql://aob@127.0.0.1:{closed_port}/aob",
    }
    done = server("coordinator", "--port", str(taken_port), env=env)
    assert one_line(done) == f"aob: port {taken_port} in use; pass --port N"


def test_data_dir_locked_by_another_dev_server(tmp_path: Path) -> None:
    first = LiveServer(tmp_path / "data").start()
    try:
        assert first.process is not None
        done = server("dev", "--data-dir", str(tmp_path / "data"), "--port", "0")
        line = one_line(done)
        assert line == (
            f"aob: data dir {(tmp_path / 'data').resolve()} is in use by another aob server "
            f"(pid {first.process.pid}); stop it, or pass --data-dir DIR"
        )
        assert done.returncode == 1
        assert first.process.poll() is None  # the first one serves on
    finally:
        first.stop()


def test_kafka_unreachable_names_the_setting(tmp_path: Path, closed_port: int) -> None:
    env = {"AOB_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port}"}
    done = server("dev", "--data-dir", str(tmp_path / "data"), "--port", "0", env=env)
    line = one_line(done)
    assert line.startswith(f"aob: cannot connect to Kafka at 127.0.0.1:{closed_port}")
    assert line.endswith("; check AOB_KAFKA_BOOTSTRAP")


def test_postgres_unreachable_names_the_setting_not_the_password(
    tmp_path: Path, closed_port: int
) -> None:
    env = {"AOB_DATABASE_URL": f"postgresql://aob:s3cret@127.0.0.1:{closed_port}/aob"}
    done = server("dev", "--data-dir", str(tmp_path / "data"), "--port", "0", env=env)
    line = one_line(done)
    assert line.startswith(f"aob: cannot use PostgreSQL at 127.0.0.1:{closed_port}/aob: ")
    assert line.endswith("; check AOB_DATABASE_URL")
    assert "s3cret" not in line


def test_invalid_setting(tmp_path: Path) -> None:
    done = server("dev", "--data-dir", str(tmp_path), env={"AOB_PORT": "eighty"})
    line = one_line(done)
    assert line.startswith("aob server: invalid setting: AOB_PORT: ")
    assert done.returncode == 2


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("AOB_WORKERS", "http", "not valid JSON"),  # a list setting given a bare word
        ("AOB_LLM_ENDPOINTS", "{bad", "not valid JSON"),
        ("AOB_HTTP_SECRETS", "nope", "not valid JSON"),  # the http worker's settings
        ("AOB_JQ_CPU_MS", "abc", "valid integer"),  # the jq sandbox's
        ("AOB_RUNS_PARTITIONS", "0", "greater than or equal to 1"),
        ("AOB_LOG_SYNCHRONOUS", "fast", "'NORMAL', 'FULL' or 'EXTRA'"),
        ("AOB_MAX_REQUEST_BYTES", "-1", "greater than or equal to 1024"),
        ("AOB_PORT", "70000", "less than or equal to 65535"),  # it listened on 4464
        ("AOB_HTTP_PORTS", "x", "bad port or port range 'x'"),  # was exit 1, unnamed
        ("AOB_HTTP_ALLOW", "10.0.0.0/99", "IPv4 or IPv6 network"),
    ],
)
def test_a_bad_setting_of_any_settings_class_is_one_line_naming_it(
    tmp_path: Path, variable: str, value: str, says: str
) -> None:
    done = server("dev", "--data-dir", str(tmp_path), env={variable: value})
    line = one_line(done)
    assert line.startswith(f"aob server: invalid setting: {variable}: "), line
    assert says in line
    assert done.returncode == 2


def test_two_sources_of_jwt_keys_are_refused(tmp_path: Path) -> None:
    env = {"AOB_AUTH_JWT_JWKS_URL": "https://idp.example/jwks", "AOB_AUTH_JWT_KEY": "pem"}
    done = server("dev", "--data-dir", str(tmp_path), env=env)
    assert one_line(done) == (
        "aob server: invalid setting: AOB_AUTH_JWT_JWKS_URL and AOB_AUTH_JWT_KEY are both"
        " set: tokens are checked against one source of keys; unset one"
    )
    assert done.returncode == 2


def test_audit_with_postgres_unreachable(tmp_path: Path, closed_port: int) -> None:
    (tmp_path / "log.db").touch()  # an embedded log to audit (empty)
    env = {"AOB_DATABASE_URL": f"postgresql://aob:s3cret@127.0.0.1:{closed_port}/aob"}
    done = server("audit", "verify", "--data-dir", str(tmp_path), env=env)
    line = one_line(done)
    assert line.startswith(f"aob: cannot use PostgreSQL at 127.0.0.1:{closed_port}/aob: ")
    assert line.endswith("; check AOB_DATABASE_URL")
    assert done.returncode == 2


def test_a_run_file_the_server_refuses_is_one_line_exit_2(tmp_path: Path) -> None:
    """`--run` with an invalid workflow printed the raw problem JSON on stdout, exit 1
    (the code of a failed run); the jq parser's own message spans lines."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        'name: bad\nnodes:\n  - {id: a, type: transform, config: {expr: "1 +"}}\n',
        encoding="utf-8",
    )
    done = server(
        "dev", "--data-dir", str(tmp_path / "data"), "--port", "0", "--run", str(bad), "--exit"
    )
    line = one_line(done)
    assert line.startswith(f"aob server: {bad}: refused (422): the workflow definition has 1 ")
    assert "/nodes/0/config/expr: invalid jq expression" in line
    assert done.returncode == 2
