"""The systemd units (infra/deploy/systemd): `systemd-analyze verify` finds nothing, one
template per service runs its role, restarts on failure, reads the environment file,
and the control plane's CPUs are disjoint from the runner plane's."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

from aob.platform.settings import SERVICES, Settings, service_problem
from tests.infra.test_deploy_docker import tool

SYSTEMD = Path(__file__).parents[2] / "infra" / "deploy" / "systemd"
ROLES = [service for service in SERVICES if service != "dev"]
CONTROL_PLANE = {"api", "coordinator", "projector", "fanout"}
RUNNER_PLANE = {"workers"}
EXECUTABLE = "/opt/aob/bin/aob"
MAX_CPUS = 1024


def unit(role: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string((SYSTEMD / f"aob-{role}@.service").read_text())
    return parser


def cpus(affinity: str) -> set[int]:
    """systemd's CPU list ("0 1", "2-1023", "0,3-5") as a set."""
    found: set[int] = set()
    for item in affinity.replace(",", " ").split():
        first, _, last = item.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return found


def test_there_is_one_template_unit_per_service() -> None:
    templates = {path.name for path in SYSTEMD.glob("*@.service")}
    assert templates == {f"aob-{role}@.service" for role in ROLES}
    assert set(ROLES) == CONTROL_PLANE | RUNNER_PLANE


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A file system root holding the units, the executable they start and systemd's
    own targets, for `systemd-analyze verify --root`."""
    units = tmp_path / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    for path in SYSTEMD.glob("aob*"):
        shutil.copy(path, units)
    executable = tmp_path / EXECUTABLE.lstrip("/")
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    system = tmp_path / "usr" / "lib" / "systemd" / "system"
    system.mkdir(parents=True)
    for pattern in ("*.target", "*.slice"):
        for path in Path("/usr/lib/systemd/system").glob(pattern):
            shutil.copy(path, system, follow_symlinks=True)
    return tmp_path


def test_systemd_analyze_verify_finds_nothing(root: Path) -> None:
    instances = [f"aob-{role}@{8080 + i}.service" for i, role in enumerate(ROLES)]
    result = subprocess.run(
        [tool("systemd-analyze"), "verify", f"--root={root}", "aob.target", *instances],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    # verify exits 0 on many findings (an unknown key, a bad value): any output fails.
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize("role", ROLES)
def test_each_unit_runs_its_role_restarts_on_failure_and_reads_the_environment_file(
    role: str,
) -> None:
    service = unit(role)["Service"]
    assert service["ExecStart"] == f"{EXECUTABLE} server {role}"
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == "/etc/aob/aob.env"
    assert service["User"] not in {"root", "0"}
    # The instance name is the port: instances of one service never collide.
    assert "AOB_PORT=%i" in unit_environment(role)
    assert unit(role)["Install"]["WantedBy"] == "aob.target"


def unit_environment(role: str) -> list[str]:
    text = (SYSTEMD / f"aob-{role}@.service").read_text()
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("Environment=")]


def test_the_control_plane_and_the_runner_plane_use_different_cpus() -> None:
    control = [cpus(unit(role)["Service"]["CPUAffinity"]) for role in sorted(CONTROL_PLANE)]
    runner = [cpus(unit(role)["Service"]["CPUAffinity"]) for role in sorted(RUNNER_PLANE)]
    assert all(control)
    assert all(runner)
    assert set().union(*control).isdisjoint(set().union(*runner))
    assert max(set().union(*control, *runner)) < MAX_CPUS


@pytest.mark.parametrize("role", ROLES)
def test_the_example_environment_file_is_valid_for_every_role(
    role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = dotenv_values(SYSTEMD / "aob.env.example")
    for name, value in values.items():
        assert name.startswith("AOB_")
        monkeypatch.setenv(name, value or "")
    monkeypatch.setenv("AOB_PORT", "8080")  # what the unit sets
    assert service_problem(Settings(_env_file=None), role) is None  # type: ignore[call-arg]
