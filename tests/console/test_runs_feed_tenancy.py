"""The live runs feed (`GET /api/v1/streams/runs`) carries the caller's tenant's runs
only. Against a live dev server: one feed per tenant listens while each tenant runs a
workflow; each feed delivers its own tenant's run and nothing of the other's, checked
once the other tenant's feed has delivered that run's completion (changes are handed
to every listener at once, so a leak would have arrived by then)."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console.live import DevServer, start_dev_server
from tests.support.tokens import operator_token_command

NOOP = {"name": "feed-tenancy", "nodes": [{"id": "a", "type": "noop"}]}
FINISHED = {"completed", "failed", "cancelled"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DevServer]:
    running = start_dev_server(tmp_path / "data")
    yield running
    running.stop()


def tenant_token(server: DevServer, tenant: str) -> str:
    """An operator token of `tenant`, made with the operators' command."""
    made = subprocess.run(
        operator_token_command(server.data_dir, tenant),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return str(json.loads(made.stdout)["token"])


class Feed:
    """One tenant's runs feed, read by a thread into a queue of run rows."""

    def __init__(self, server: DevServer, token: str) -> None:
        self.rows: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._client = server.client(token)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self.ready.wait(20), "the feed never said ready"

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/api/v1/streams/runs", timeout=None) as reply:
                event = ""
                for line in reply.iter_lines():
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and event == "ready":
                        self.ready.set()
                    elif line.startswith("data:") and event == "run":
                        self.rows.put(json.loads(line.split(":", 1)[1]))
        except httpx.HTTPError:
            return  # closed at the end of the test

    def until_finished(self, run_id: str) -> None:
        while True:
            row = self.rows.get(timeout=30)
            self.seen.append(row)
            if row.get("run_id") == run_id and row.get("status") in FINISHED:
                return

    def close(self) -> None:
        self._client.close()


def submit(server: DevServer, token: str) -> str:
    with server.client(token) as client:
        response = client.post("/api/v1/runs", json={"definition": NOOP, "inputs": {}})
        assert response.status_code == 202, response.text
        return str(response.json()["run_id"])


def test_each_tenants_feed_carries_its_own_runs_only(server: DevServer) -> None:
    tokens = {tenant: tenant_token(server, tenant) for tenant in ("acme", "globex")}
    feeds = {tenant: Feed(server, token) for tenant, token in tokens.items()}
    try:
        runs = {tenant: submit(server, token) for tenant, token in tokens.items()}
        for tenant, feed in feeds.items():
            feed.until_finished(runs[tenant])
        for tenant, feed in feeds.items():
            other = next(t for t in runs if t != tenant)
            seen_runs = {row.get("run_id") for row in feed.seen}
            assert runs[tenant] in seen_runs
            assert runs[other] not in seen_runs, f"{tenant}'s feed showed {other}'s run"
            assert all(row.get("run_id") != runs[other] for row in list(feed.rows.queue))
    finally:
        for feed in feeds.values():
            feed.close()
