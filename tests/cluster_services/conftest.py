"""Cluster services as a deployment runs them: one `python -m aob.platform <service>`
process each, configured by environment variables only, on the session's Kafka broker
(fresh topics: a topic prefix) and PostgreSQL server (a fresh schema)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.postgres import PostgresSchemas

LISTENING = re.compile(r"listening on (http://\S+)")
# A deadline, not a measurement: a service starting on a loaded shared machine (load 20
# on 2 cores) took more than 60 s.
START_TIMEOUT = 180.0


@dataclass
class Service:
    role: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    """Services started in `directory` with `env`; all stopped at teardown."""

    directory: Path
    env: dict[str, str]
    services: dict[str, Service] = field(default_factory=dict)

    def start(self, *roles: str) -> None:
        """Start the services at once, then wait until each listens."""
        for role in roles:
            log = self.directory / f"{role}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "aob.platform", role, "--port", "0"],
                    cwd=self.directory,  # no .env of a developer's checkout
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self.services[role] = Service(role, process, log)
        for role in roles:
            self.services[role].url = self._listening(self.services[role])

    def restart(self, *roles: str) -> None:
        """Stop the services (SIGTERM, then their exits) and start them again."""
        for role in roles:
            self.services[role].process.send_signal(signal.SIGTERM)
        for role in roles:
            assert self.services[role].process.wait(timeout=20) == -signal.SIGTERM
            self.services[role].log.rename(self.directory / f"{role}.before-restart.log")
        self.start(*roles)

    def _listening(self, service: Service) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = LISTENING.search(service.output())
            if found:
                return found.group(1)
            if service.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{service.role} did not start:\n{service.output()}")

    def url(self, role: str) -> str:
        return self.services[role].url

    def stop(self) -> dict[str, int]:
        """SIGTERM every service; their exit codes."""
        for service in self.services.values():
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        codes = {}
        for role, service in self.services.items():
            try:
                codes[role] = service.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.process.kill()
                codes[role] = service.process.wait()
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- {r}\n{s.output()}" for r, s in self.services.items())


def cluster_env(bootstrap: str, dsn: str, data_dir: Path) -> dict[str, str]:
    """The environment of a deployment: the parent's, without its AOB_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOB_")}
    env.update(
        AOB_AUTH="off",  # tested in tests/auth
        AOB_RATE_LIMIT="false",
        AOB_KAFKA_BOOTSTRAP=bootstrap,
        AOB_DATABASE_URL=dsn,
        AOB_TOPIC_PREFIX=f"svc.{uuid.uuid4().hex[:12]}.",
        AOB_DATA_DIR=str(data_dir),
        AOB_KAFKA_POLL_INTERVAL="0.02",
        AOB_RUNS_PARTITIONS="2",
        AOB_WORKFLOWS_PARTITIONS="1",
        AOB_TASKS_PARTITIONS="1",
    )
    return env


@pytest.fixture(scope="module")
def cluster(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """api, coordinator, projector, workers and fanout, each its own process, for the
    module."""
    schemas = PostgresSchemas(postgres_dsn)
    directory = tmp_path_factory.mktemp("services")
    env = cluster_env(kafka_bootstrap, schemas.create(), directory / "data")
    running = Cluster(directory, env)
    try:
        running.start("api", "coordinator", "projector", "workers", "fanout")
        yield running
    finally:
        running.stop()
        schemas.drop_all()
