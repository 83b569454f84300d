"""The real embedded engine behind the real HTTP API, with the approval verbs."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx

from aob.platform.settings import Settings
from tests.support.api import FINISHED, node, running
from tests.support.api import Aob as Client

__all__ = ["FINISHED", "Aob", "node", "review", "running_aob"]


class Aob(Client):
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


def running_aob(data_dir: Path) -> AbstractAsyncContextManager[Aob]:
    return running(Settings(data_dir=data_dir), Aob)


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
