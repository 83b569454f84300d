"""Rate limits through the real API: 429 with Retry-After and nothing recorded, per
tenant and tier (inline, by tag, replays), exact under concurrent submissions."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aob.events.codec import decode
from aob.events.types import RUNS_TOPIC, RunSubmitted
from tests.auth.conftest import Server, serving, transform

LIMITS = {"simple": 3, "standard": 2, "heavy": 1}


async def runs_recorded(server: Server) -> int:
    """RunSubmitted events in the log (the coordinator appends others meanwhile)."""
    log = server.engine.log
    count = 0
    for partition in range(await log.partitions(RUNS_TOPIC)):
        offset = 0
        while batch := await log.read(RUNS_TOPIC, partition, offset, 1000):
            count += sum(isinstance(decode(r.value).payload, RunSubmitted) for r in batch)
            offset = batch[-1].offset + 1
    return count


async def test_over_the_limit_the_api_answers_429_and_records_nothing(tmp_path: Path) -> None:
    async with serving(tmp_path / "d", rate_limit=True, rate_limits=LIMITS) as server:
        acme = await server.as_("ann", "operator", tenant="acme")
        beta = await server.as_("bo", "operator", tenant="beta")
        async with acme, beta:
            heavy = {"definition": transform("h", agents=3)}
            assert (await acme.post("/api/v1/runs", json=heavy)).status_code == 202
            before = await runs_recorded(server)
            refused = await acme.post("/api/v1/runs", json=heavy)
            assert refused.status_code == 429
            assert refused.headers["content-type"] == "application/problem+json"
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            body = refused.json()
            assert (body["tier"], body["limit_per_minute"]) == ("heavy", 1)
            assert "acme" in body["detail"]
            assert await runs_recorded(server) == before  # nothing appended

            standard = {"definition": transform("s", agents=2)}
            statuses = [(await acme.post("/api/v1/runs", json=standard)).status_code for _ in "123"]
            assert statuses == [202, 202, 429]
            assert (await beta.post("/api/v1/runs", json=heavy)).status_code == 202  # own budget
            metrics = (await acme.get("/metrics")).text
            assert 'rate_limited_total{tier="heavy"} 1.0' in metrics
            assert 'rate_limited_total{tier="standard"} 1.0' in metrics


async def test_stored_workflows_and_replays_are_limited_by_their_definition(
    tmp_path: Path,
) -> None:
    async with (
        serving(tmp_path / "d", rate_limit=True, rate_limits=LIMITS) as server,
        await server.as_("ann", "operator") as client,
    ):
        created = await client.post(
            "/api/v1/workflows", json={"definition": transform("big", agents=4)}
        )
        assert created.status_code == 201, created.text
        by_tag = await client.post("/api/v1/runs", json={"tag": "big"})
        assert by_tag.status_code == 202
        again = await client.post("/api/v1/runs", json={"workflow_id": "big", "version": 1})
        assert again.status_code == 429
        assert again.json()["tier"] == "heavy"
        replay = await client.post(f"/api/v1/runs/{by_tag.json()['run_id']}/replay")
        assert replay.status_code == 429
        simple = await client.post("/api/v1/runs", json={"definition": transform()})
        assert simple.status_code == 202
        unknown = await client.post("/api/v1/runs", json={"tag": "nosuch"})
        assert unknown.status_code == 404  # not counted, and not hidden by the limiter


async def test_concurrent_submissions_are_admitted_exactly_up_to_the_limit(
    tmp_path: Path,
) -> None:
    limits = {"simple": 7, "standard": 2, "heavy": 1}
    async with (
        serving(tmp_path / "d", rate_limit=True, rate_limits=limits) as server,
        await server.as_("ann", "operator") as client,
    ):
        before = await runs_recorded(server)
        body = {"definition": transform()}
        responses = await asyncio.gather(
            *(client.post("/api/v1/runs", json=body) for _ in range(25))
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [202] * 7 + [429] * 18
        assert await runs_recorded(server) == before + 7


async def test_per_tenant_limits_are_configurable(tmp_path: Path) -> None:
    tenants = {"big": {"heavy": 3}}
    async with (
        serving(
            tmp_path / "d", rate_limit=True, rate_limits=LIMITS, rate_limit_tenants=tenants
        ) as server,
        await server.as_("ann", "operator", tenant="big") as client,
    ):
        heavy = {"definition": transform("h", agents=5)}
        codes = [(await client.post("/api/v1/runs", json=heavy)).status_code for _ in "1234"]
        assert codes == [202, 202, 202, 429]
