"""/health of an API-serving process reports its token and rate-limiter stores."""

from __future__ import annotations

from pathlib import Path

from tests.auth.conftest import serving


async def test_health_reports_the_token_and_limiter_stores(tmp_path: Path) -> None:
    async with serving(tmp_path / "data", rate_limit=True) as server, server.client() as client:
        healthy = await client.get("/health")
        assert healthy.status_code == 200, healthy.text
        dependencies = healthy.json()["dependencies"]
        assert dependencies["token_store"] == "ok"
        assert dependencies["rate_limiter_store"] == "ok"

        limiter = server.security.limiter
        assert limiter is not None
        limiter.store._conn.close()  # type: ignore[attr-defined]  # the store goes down
        down = await client.get("/health")
        assert down.status_code == 503
        assert down.json()["status"] == "degraded"
        assert down.json()["dependencies"]["rate_limiter_store"].startswith("error: ")
        assert down.json()["dependencies"]["token_store"] == "ok"


async def test_health_reports_a_token_store_that_is_down(tmp_path: Path) -> None:
    async with serving(tmp_path / "data") as server, server.client() as client:
        assert "rate_limiter_store" not in (await client.get("/health")).json()["dependencies"]
        authenticator = server.security.authenticator
        assert authenticator is not None
        authenticator.tokens._conn.close()  # type: ignore[attr-defined]
        down = await client.get("/health")
        assert down.status_code == 503
        assert down.json()["dependencies"]["token_store"].startswith("error: ")
