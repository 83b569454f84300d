"""Replay for audit on one process: a run's history from the log (API and command), and
the rebuild of every read model from offset 0 compared with the live store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from aob.platform.__main__ import main
from aob.platform.api.app import create_app
from aob.platform.audit import fresh_read_models, verify
from aob.platform.engine import Engine
from aob.platform.settings import Settings

FLOW = {
    "name": "flow",
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expr": ".inputs.x * 2"}},
        {"id": "b", "type": "transform", "config": {"expr": ".nodes.a + 1"}},
    ],
    "edges": [{"from": "a", "to": "b"}],
    "output": ".nodes.b",
}


@pytest.fixture(autouse=True)
def embedded_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read their settings from the environment: none of a cluster's."""
    monkeypatch.delenv("AOB_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("AOB_DATABASE_URL", raising=False)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Engine]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://aob") as client:
            yield client, app.state.engine


async def completed_run(client: httpx.AsyncClient, inputs: Any) -> str:
    submitted = await client.post("/api/v1/runs", json={"definition": FLOW, "inputs": inputs})
    run_id: str = submitted.json()["run_id"]
    for _ in range(500):
        run = (await client.get(f"/api/v1/runs/{run_id}")).json()
        if run["status"] == "completed":
            return run_id
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not complete")


def embedded(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, kafka_bootstrap=None, database_url=None)


async def test_history_from_the_log_matches_the_timeline_and_pages(tmp_path: Path) -> None:
    async with serving(embedded(tmp_path)) as (client, _):
        run_id = await completed_run(client, {"x": 1})
        other = await completed_run(client, {"x": 2})
        events = f"/api/v1/runs/{run_id}/events"
        timeline = (await client.get(events)).json()["items"]
        from_log = (await client.get(events, params={"source": "log"})).json()["items"]
        assert from_log == timeline
        assert {e["key"] for e in from_log} == {run_id} != {other}
        after = from_log[1]["offset"]
        page = await client.get(events, params={"source": "log", "after": after, "limit": 2})
        assert page.json()["items"] == from_log[2:4]
        unknown = await client.get("/api/v1/runs/run_nope/events", params={"source": "log"})
        assert unknown.status_code == 404
        bad = await client.get(events, params={"source": "cache"})
        assert bad.status_code == 422


def test_audit_commands_on_the_embedded_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def one_run() -> str:
        async with serving(embedded(tmp_path)) as (client, _):
            return await completed_run(client, {"x": 3})

    run_id = asyncio.run(one_run())  # the server stops: the embedded log has one owner
    data = ["--data-dir", str(tmp_path)]

    assert main(["audit", "history", run_id, "--json", *data]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["type"] == "RunSubmitted"
    assert events[0]["data"]["inputs"] == {"x": 3}
    assert events[-1]["type"] == "RunCompleted"
    assert events[-1]["data"]["output"] == 7

    assert main(["audit", "history", run_id, *data]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(events)
    assert main(["audit", "history", "run_nope", *data]) == 1
    assert "no run 'run_nope'" in capsys.readouterr().err

    assert main(["audit", "verify", *data]) == 0
    assert "identical to the live read models" in capsys.readouterr().out

    with sqlite3.connect(tmp_path / "readmodels.db") as db:
        db.execute("UPDATE runs SET status = 'failed' WHERE run_id = ?", (run_id,))
    assert main(["audit", "verify", *data]) == 1
    summary = capsys.readouterr().out
    assert "1 table(s) differ" in summary
    assert "runs: 1 live rows, 1 rebuilt; 1 only live, 1 only rebuilt" in summary


def test_audit_without_a_log_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--data-dir", str(tmp_path / "none")]) == 2
    assert "no embedded log" in capsys.readouterr().err


async def test_verify_rebuilds_postgres_read_models_into_a_fresh_schema(
    tmp_path: Path, postgres_schema: str
) -> None:
    dsn = SecretStr(postgres_schema)
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None, database_url=dsn)
    async with serving(settings) as (client, engine):
        run_ids = [await completed_run(client, {"x": x}) for x in range(3)]
        async with fresh_read_models(settings) as (fresh, where):
            outcome = await verify(engine.log, engine.read_models, fresh)
        assert outcome.equal, outcome.summary()
        assert outcome.tables["runs"] == 3
        assert outcome.applied == sum(outcome.positions.values())

        conn = await asyncpg.connect(postgres_schema)
        try:
            await conn.execute("DELETE FROM node_runs WHERE run_id = $1", run_ids[0])
            async with fresh_read_models(settings) as (fresh, _):
                outcome = await verify(engine.log, engine.read_models, fresh)
            leftovers = await conn.fetchval(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
                where.removeprefix("schema "),
            )
        finally:
            await conn.close()
    assert set(outcome.differences) == {"node_runs"}
    missing = outcome.differences["node_runs"]
    assert (missing.live_rows, missing.rebuilt_rows) == (4, 6)
    assert {row[0] for row in missing.only_rebuilt} == {run_ids[0]}
    assert leftovers == 0  # the rebuilt schema is dropped
