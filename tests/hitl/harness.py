"""The real embedded engine behind the real HTTP API, in-process, on a temp data dir."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from aob.platform.api.app import create_app
from aob.platform.engine import Engine
from aob.platform.settings import Settings

FINISHED = ("completed", "failed", "cancelled")


class Aob:
    def __init__(self, client: httpx.AsyncClient, engine: Engine) -> None:
        self.client = client
        self.engine = engine

    async def submit(self, definition: dict[str, Any], inputs: Any = None) -> str:
        body = {"definition": definition, "inputs": inputs or {}}
        response = await self.client.post("/api/v1/runs", json=body)
        assert response.status_code == 202, response.text
        run_id: str = response.json()["run_id"]
        return run_id

    async def run(self, run_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        return run

    async def finished(self, run_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.until(run_id, lambda run: run["status"] in FINISHED, timeout)

    async def pending(self, run_id: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
        """The run's pending approvals, once there are `count` of them."""
        async with asyncio.timeout(timeout):
            while True:
                items = await self.approvals(run_id=run_id)
                if len(items) >= count:
                    return items
                await asyncio.sleep(0.02)

    async def approvals(self, **params: str) -> list[Any]:
        response = await self.client.get("/api/v1/approvals", params=params)
        assert response.status_code == 200, response.text
        items: list[Any] = response.json()["items"]
        return items

    async def decide(
        self,
        approval_id: str,
        decision: str,
        *,
        actor: str = "alice",
        comments: str = "",
        roles: str | None = None,
    ) -> httpx.Response:
        headers = {"X-Aob-Actor": actor}
        if roles is not None:
            headers["X-Aob-Roles"] = roles
        return await self.client.post(
            f"/api/v1/approvals/{approval_id}/decide",
            json={"decision": decision, "comments": comments},
            headers=headers,
        )

    async def events(self, run_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"/api/v1/runs/{run_id}/events")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def until(
        self, run_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The run once `done(run)` holds (polled: the API is what is under test)."""
        async with asyncio.timeout(timeout):
            while True:
                run: dict[str, Any] = await self.run(run_id)
                if done(run):
                    return run
                await asyncio.sleep(0.02)


@asynccontextmanager
async def running_aob(data_dir: Path) -> AsyncIterator[Aob]:
    """The app with its lifespan (engine started, then stopped on exit)."""
    app = create_app(Settings(data_dir=data_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://aob") as client:
            yield Aob(client, app.state.engine)


def review(gate: dict[str, Any] | None = None, **node: Any) -> dict[str, Any]:
    """draft -> gate (hitl) -> publish; revise is gate's rejection path."""
    config = {
        "message": "Publish {{ .nodes.draft.title }}?",
        "payload": {"title": "{{ .nodes.draft.title }}", "words": "{{ .nodes.draft.words }}"},
        "rejection_path": ["revise"],
        **(gate or {}),
    }
    return {
        "name": "review",
        "nodes": [
            {"id": "draft", "type": "noop", "config": {"output": {"title": "Q3", "words": 120}}},
            {"id": "gate", "type": "hitl", "config": config, **node},
            {"id": "publish", "type": "transform", "config": {"expr": '"published"'}},
            {"id": "revise", "type": "transform", "config": {"expr": '"revised"'}},
        ],
        "edges": [{"from": "draft", "to": "gate"}, {"from": "gate", "to": "publish"}],
        "output": "{publish: .nodes.publish, revise: .nodes.revise, gate: .nodes.gate}",
    }


def node(run: dict[str, Any], node_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [n for n in run["nodes"] if n["node_id"] == node_id]
    assert len(found) == 1, f"{node_id!r} in {run['nodes']}"
    return found[0]
