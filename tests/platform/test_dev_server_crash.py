"""`aob server dev` killed with SIGKILL mid-run: restarted, every run carries on from the
committed offsets and finishes, with nothing lost and nothing done twice."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from aob.events.codec import decode
from aob.events.log.sqlite import SqliteEventLog
from aob.events.types import RUNS_TOPIC, Event, NodeCompleted, NodeScheduled, RunCompleted

pytestmark = pytest.mark.slow

CHAIN = 10
RUNS = 150


def chain_definition() -> dict[str, Any]:
    """A chain whose odd nodes only the jq sandbox takes (`first` is off its fast path):
    the kill finds steps both in the builtin worker and decided by the coordinator."""
    nodes = [{"id": "n0", "type": "transform", "config": {"expr": ".inputs.start"}}]
    nodes += [
        {"id": f"n{i}", "type": "transform", "config": {"expr": step(f".nodes.n{i - 1} + 1", i)}}
        for i in range(1, CHAIN)
    ]
    edges = [{"from": f"n{i - 1}", "to": f"n{i}"} for i in range(1, CHAIN)]
    return {"name": "chain", "nodes": nodes, "edges": edges, "output": f".nodes.n{CHAIN - 1}"}


def step(program: str, i: int) -> str:
    return f"[{program}] | first" if i % 2 else program


class DevServer:
    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aob.platform",
                "dev",
                "--data-dir",
                str(data_dir),
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, f"unexpected first line: {line!r}"
        self.url = match.group(1)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._close()

    def stop(self) -> None:
        """SIGTERM: a graceful shutdown, ending the way the signal asks."""
        self.process.terminate()
        assert self.process.wait(timeout=20) in (0, -signal.SIGTERM)
        self._close()

    def _close(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()


async def read_run_events(data_dir: Path) -> list[Event]:
    log = await SqliteEventLog.open(data_dir / "log.db")
    try:
        events = []
        for partition in range(await log.partitions(RUNS_TOPIC)):
            offset = 0
            while batch := await log.read(RUNS_TOPIC, partition, offset, 1000):
                events += [decode(record.value) for record in batch]
                offset = batch[-1].offset + 1
        return events
    finally:
        await log.close()


async def test_runs_survive_sigkill_with_nothing_lost_or_done_twice(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = DevServer(data_dir)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        body = {"definition": chain_definition(), "inputs": {"start": 0}}
        responses = await asyncio.gather(
            *(client.post("/api/v1/runs", json=body) for _ in range(RUNS))
        )
    server.kill()
    run_ids = {response.json()["run_id"] for response in responses}
    assert all(response.status_code == 202 for response in responses)

    before = await read_run_events(data_dir)
    finished_before = {e.key for e in before if isinstance(e.payload, RunCompleted)}
    assert len(finished_before) < RUNS, "every run finished before the kill: nothing was tested"

    server = DevServer(data_dir)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            for run_id in run_ids:
                run = await wait_finished(client, run_id)
                assert (run["status"], run["output"]) == ("completed", CHAIN - 1)
    finally:
        server.stop()

    events = await read_run_events(data_dir)
    assert {e.key for e in events if isinstance(e.payload, RunCompleted)} == run_ids
    ids = Counter(e.event_id for e in events)
    assert max(ids.values()) == 1, "an event was appended twice"
    for kind in (NodeScheduled, NodeCompleted, RunCompleted):
        per_instance = Counter(
            (e.key, getattr(e.payload, "node_id", ""))
            for e in events
            if isinstance(e.payload, kind)
        )
        assert set(per_instance.values()) == {1}, f"{kind.__name__} happened twice"
    assert len([e for e in events if isinstance(e.payload, NodeCompleted)]) == RUNS * CHAIN
    by_whom = Counter(e.actor for e in events if isinstance(e.payload, NodeCompleted))
    assert by_whom == {"worker:builtin": RUNS * (CHAIN // 2), "worker:inline": RUNS * (CHAIN // 2)}


async def wait_finished(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    for _ in range(1000):
        run: dict[str, Any] = (await client.get(f"/api/v1/runs/{run_id}")).json()
        if run["status"] in ("completed", "failed", "cancelled"):
            return run
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never finished after the restart")


def test_python_dash_m_platform_keeps_the_stdlib_module() -> None:
    """The card's `platform/` folder must never shadow the standard library."""
    code = "import platform, aob.platform; print(platform.python_version())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    )
    assert out.stdout.strip() == ".".join(map(str, sys.version_info[:3]))
