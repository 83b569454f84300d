"""In cluster mode the limiter's state is in PostgreSQL: several API processes (here
three `Security` instances, each with its own connection pool, as three processes
would have) share one limit per tenant and tier, under concurrent requests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from aob.platform.auth.security import Security
from aob.platform.ratelimit.http import RateLimitMiddleware
from aob.platform.ratelimit.stores import PostgresLimiterStore
from aob.platform.settings import Settings


async def accepted(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def inline(body: dict[str, Any], replayed: str | None, tenant: str) -> Any:
    return body.get("definition")


def api(security: Security) -> RateLimitMiddleware:
    """One API process's limiting in front of an app that accepts everything."""
    return RateLimitMiddleware(accepted, lambda: security.limiter, inline)


async def test_api_processes_share_one_limit(tmp_path: Path, postgres_schema: str) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=SecretStr(postgres_schema),
        auth="off",
        rate_limit=True,
        rate_limits={"simple": 6, "standard": 2, "heavy": 1},
    )
    processes = [Security(settings) for _ in range(3)]
    for security in processes:
        await security.open()
    try:
        assert all(isinstance(s.limiter.store, PostgresLimiterStore) for s in processes)  # type: ignore[union-attr]
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=api(s)), base_url="http://api")
            for s in processes
        ]
        body = {"definition": {"nodes": [{"id": "a", "type": "transform"}]}}
        responses = await asyncio.gather(
            *(clients[i % 3].post("/api/v1/runs", json=body) for i in range(30))
        )
        assert sorted(r.status_code for r in responses) == [202] * 6 + [429] * 24
        assert all("retry-after" in r.headers for r in responses if r.status_code == 429)
        for client in clients:
            await client.aclose()
    finally:
        for security in processes:
            await security.close()
