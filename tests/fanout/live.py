"""A real `aob server dev` in a subprocess, for tests that talk to it as clients do."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
POLL_S = 0.02  # how often a condition is checked again: a poll, not a guess at timing


def eventually(condition: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """`condition()` once it is truthy, checked every POLL_S; fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(POLL_S)


async def until(
    condition: Callable[[], Awaitable[T | None]], what: str, timeout: float = 20.0
) -> T:
    """The async `eventually`, for a coroutine function `condition`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(POLL_S)


# A node type no worker in the dev server handles: its nodes stay scheduled until
# they time out or the run is cancelled, which makes runs as long as a test needs.
EXTERNAL_TYPE = "ext"

HELD = {"name": "held", "nodes": [{"id": "wait", "type": EXTERNAL_TYPE}]}
# ~10 attempts of 120 ms plus 40 ms backoff: events keep coming for about 1.6 s.
SLOW = {
    "name": "slow",
    "nodes": [
        {"id": "first", "type": "noop", "config": {"output": 1}},
        {
            "id": "wait",
            "type": EXTERNAL_TYPE,
            "timeout_ms": 120,
            "retry": {"max_attempts": 10, "initial_backoff_ms": 40, "multiplier": 1},
        },
    ],
    "edges": [{"from": "first", "to": "wait"}],
}
FAILING = {
    "name": "failing",
    "nodes": [
        {"id": "ok", "type": "noop", "config": {"output": 1}},
        {"id": "boom", "type": "transform", "config": {"expr": 'error("boom")'}},
    ],
    "edges": [{"from": "ok", "to": "boom"}],
}
QUICK = {
    "name": "quick",
    "output": ".nodes.b",
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expr": ".inputs.x + 1"}},
        {"id": "b", "type": "transform", "config": {"expr": ".nodes.a * 2"}},
    ],
    "edges": [{"from": "a", "to": "b"}],
}


class LiveServer:
    """`python -m aob.platform dev` on a free port; `restart()` keeps port and data."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> LiveServer:
        env = {**os.environ, "AOB_NODE_TYPES": f'["{EXTERNAL_TYPE}"]', **self.extra_env}
        command = [
            sys.executable,
            "-m",
            "aob.platform",
            "dev",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
        ]
        for _ in range(50):  # the old process's port may take a moment to free up
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
            assert self.process.stdout is not None
            line = self.process.stdout.readline()
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                return self
            self.process.wait(timeout=10)
            time.sleep(0.1)  # a back-off between attempts, not a synchronisation
        raise AssertionError("the dev server did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def restart(self, sig: int = signal.SIGKILL) -> None:
        self.stop(sig)
        self.start()

    # --- API helpers ---------------------------------------------------------------

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, trust_env=False)

    def submit(self, definition: dict[str, Any], inputs: Any = None) -> str:
        with self.client() as client:
            response = client.post(
                "/api/v1/runs", json={"definition": definition, "inputs": inputs or {}}
            )
            assert response.status_code == 202, response.text
            run_id: str = response.json()["run_id"]
            return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        with self.client() as client:
            response = client.get(f"/api/v1/runs/{run_id}")
            assert response.status_code == 200, response.text
            run: dict[str, Any] = response.json()
            return run

    def wait_finished(self, run_id: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.wait_status(run_id, ("completed", "failed", "cancelled"), timeout)

    def wait_status(
        self, run_id: str, statuses: tuple[str, ...], timeout: float = 20.0
    ) -> dict[str, Any]:
        """The run (read model) once its status is one of `statuses`."""

        def reached() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["status"] in statuses else None

        return eventually(reached, f"run {run_id} {'/'.join(statuses)}", timeout)

    def wait_event(
        self, run_id: str, event_type: str, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """The run's timeline once it holds an event of `event_type` (e.g. NodeScheduled)."""

        def holds() -> list[dict[str, Any]] | None:
            items = self.events(run_id)
            return items if any(e["type"] == event_type for e in items) else None

        return eventually(holds, f"{event_type} in run {run_id}'s timeline", timeout)

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's whole timeline (read model), once it has caught up."""
        with self.client() as client:
            items: list[dict[str, Any]] = client.get(
                f"/api/v1/runs/{run_id}/events", params={"limit": 10000}
            ).json()["items"]
            return items

    def cancel(self, run_id: str) -> None:
        with self.client() as client:
            response = client.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "test"})
            assert response.status_code == 202, response.text

    def has_route(self, method: str, path: str) -> bool:
        with self.client() as client:
            paths = client.get("/openapi.json").json()["paths"]
        return method.lower() in paths.get(path, {})


async def submitted(engine: Any, definition: dict[str, Any]) -> str:
    """The id of a run of `definition` submitted straight through `engine`'s commands."""
    from aob.platform.commands import Commands

    accepted = await Commands(engine).submit_run(
        definition=definition,
        tag=None,
        workflow_id=None,
        version=None,
        inputs={},
        actor="test",
        trace_id="t",
    )
    return str(accepted["run_id"])
