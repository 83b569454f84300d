"""The Dockerfile: hadolint finds nothing, the image has what the deployment docs rely
on, and its ENV, ENTRYPOINT and HEALTHCHECK work when run as written (no Docker engine
here: the service runs from this checkout's install with the image's environment)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aob.platform.settings import SERVICES

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A validator from the venv (infra/test installs them) or the PATH; never skipped."""
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, f"{name} is not installed: run infra/test (it installs the validators)"
    return found


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1].strip()) for item in logical]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE.read_text())
    start = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[start:]


def single(stage: list[tuple[str, str]], name: str) -> str:
    [value] = [arguments for instruction, arguments in stage if instruction == name]
    return value


def environment(stage: list[tuple[str, str]]) -> dict[str, str]:
    variables = {}
    for instruction, arguments in stage:
        if instruction == "ENV":
            for pair in arguments.split():
                name, _, value = pair.partition("=")
                variables[name] = value
    return variables


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_every_stage_is_python_3_11_slim() -> None:
    bases = [
        args.split()[0] for name, args in instructions(DOCKERFILE.read_text()) if name == "FROM"
    ]
    assert bases
    assert set(bases) == {"python:3.11-slim"}


def test_the_image_installs_the_package_and_runs_a_role_as_a_non_root_user() -> None:
    runs = [args for name, args in instructions(DOCKERFILE.read_text()) if name == "RUN"]
    assert any("pip install" in args and "." in args.split() for args in runs)
    stage = final_stage()
    user = single(stage, "USER").split(":")[0]
    assert user not in {"root", "0"}
    assert json.loads(single(stage, "ENTRYPOINT")) == ["aob", "server"]
    [role] = json.loads(single(stage, "CMD"))
    assert role in SERVICES


def test_the_service_listens_on_the_exposed_port_of_every_address() -> None:
    stage = final_stage()
    env = environment(stage)
    assert env["AOB_HOST"] == "0.0.0.0"
    assert single(stage, "EXPOSE") == env["AOB_PORT"]
    assert "/health" in single(stage, "HEALTHCHECK")


def test_dockerignore_lets_in_every_package_folder() -> None:
    """The build context holds only what `pip install .` needs: a package folder that
    aob/ links to but .dockerignore leaves out would be missing from the image."""
    allowed = {
        line[1:]
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    linked = {path.name for path in (ROOT / "aob").iterdir() if path.is_symlink()}
    assert linked
    assert linked | {"aob", "pyproject.toml", "README.md"} <= allowed


# --- the image's ENV, ENTRYPOINT and HEALTHCHECK, run as written ------------------------


def healthcheck_command() -> list[str]:
    arguments = single(final_stage(), "HEALTHCHECK")
    command: list[str] = json.loads(arguments.split("CMD", 1)[1])
    return command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def image_environment(port: int, data_dir: Path) -> dict[str, str]:
    """This machine's environment with the image's ENV (the venv's bin first on PATH)."""
    env = {**os.environ, **environment(final_stage())}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    env.update(AOB_PORT=str(port), AOB_DATA_DIR=str(data_dir))
    return env


def check_health(env: dict[str, str]) -> int:
    return subprocess.run(healthcheck_command(), env=env, timeout=30, check=False).returncode


@pytest.fixture
def service(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`ENTRYPOINT CMD` with the image's environment, the role being dev (no Kafka)."""
    env = image_environment(free_port(), tmp_path / "data")
    entrypoint = json.loads(single(final_stage(), "ENTRYPOINT"))
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [*entrypoint, "dev"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield env
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_healthcheck_passes_once_the_service_answers(service: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    while check_health(service) != 0:
        assert time.monotonic() < deadline, "the healthcheck did not pass within 60 s"
        time.sleep(0.5)


class _Degraded(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_healthcheck_fails_on_503_and_when_nothing_listens(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Degraded)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert check_health(image_environment(server.server_port, tmp_path)) != 0
    finally:
        server.shutdown()
        server.server_close()
    assert check_health(image_environment(free_port(), tmp_path)) != 0
