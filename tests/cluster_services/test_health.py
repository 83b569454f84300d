"""/health names each dependency and answers 503 when one fails."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
from pydantic import SecretStr

from aob.platform.api.app import create_app
from aob.platform.settings import Settings


async def test_health_turns_503_when_the_read_models_go_away(
    tmp_path: Path, postgres_schema: str
) -> None:
    dsn = SecretStr(postgres_schema)
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None, database_url=dsn)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://aob") as client:
            healthy = await client.get("/health")
            assert healthy.status_code == 200
            backends = {"event_log": "embedded", "read_models": "postgres"}
            assert healthy.json()["backends"] == backends

            schema = parse_qs(urlsplit(postgres_schema).query)["search_path"][0]
            conn = await asyncpg.connect(postgres_schema)
            try:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            finally:
                await conn.close()

            broken = await client.get("/health")
    assert broken.status_code == 503
    health = broken.json()
    assert health["status"] == "degraded"
    assert health["dependencies"]["event_log"] == "ok"
    assert health["dependencies"]["read_models"].startswith("error: ")
    assert "projector_offsets" in health["dependencies"]["read_models"]
