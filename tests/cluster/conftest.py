"""Cluster tests: coordinator and worker processes on a Kafka broker of their own.

They use the real topic names (`aob.runs`, `aob.tasks.<type>`) and consumer groups, so
they cannot share a cluster with anything else: the package starts its own broker
(aob.infra.kafka, a few seconds) instead of using the session's `kafka_bootstrap`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aob.infra.kafka import KafkaBroker

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="package")
def cluster_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = KafkaBroker.start(tmp_path_factory.mktemp("cluster-kafka"), die_with_parent=True)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


class Processes:
    """Child processes of one test, each logging to a file; all ended at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        self.started.append((process, log))
        return process

    def stop_all(self) -> None:
        for process, _ in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in self.started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self) -> str:
        """Each process's log tail, for failure messages."""
        tails = []
        for process, log in self.started:
            text = log.read_text(errors="replace").splitlines()[-25:]
            tails.append(f"--- {log.name} (pid {process.pid}, rc {process.poll()})")
            tails.extend(text)
        return "\n".join(tails)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    children = Processes(tmp_path)
    try:
        yield children
    finally:
        children.stop_all()


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """kill -9: no shutdown code runs, nothing is flushed or committed."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
