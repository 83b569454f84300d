"""Versions and tag moves on Kafka and PostgreSQL: two API engines (each its own Kafka
clients and database pool, as two processes have) create versions of one workflow and
move one tag at the same time; a projector engine's decider is the single writer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pydantic import SecretStr

from aob.events.partitioner import partition_for
from aob.platform.commands import Commands
from aob.platform.engine import Engine
from aob.platform.settings import Settings
from tests.platform.test_versions import (
    CREATIONS_PER_API,
    check_linear_history,
    check_versions,
    create_concurrently,
    move_concurrently,
)

PARTITIONS = 3
WORKFLOW = "orders"
TAG = "live"


def cluster_settings(bootstrap: str, dsn: str, data_dir: Path) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        database_url=SecretStr(dsn),
        data_dir=data_dir,
        topic_prefix=f"versions.{uuid.uuid4().hex[:12]}.",
        kafka_poll_interval=0.02,
        workflows_partitions=PARTITIONS,
        runs_partitions=1,
        tasks_partitions=1,
    )


@asynccontextmanager
async def services(
    settings: Settings, projectors: int = 1
) -> AsyncIterator[tuple[list[Engine], list[Engine]]]:
    """Projector engines (read models and a workflow decider each) and two API engines."""
    engines: list[Engine] = []
    try:
        for role in ("projector",) * projectors + ("api", "api"):
            engines.append(await Engine.open(settings, role))
        await asyncio.gather(*(engine.start() for engine in engines))
        yield engines[:projectors], engines[projectors:]
    finally:
        await asyncio.gather(*(engine.stop() for engine in engines))


async def test_two_api_engines_get_distinct_consecutive_versions_and_tag_history(
    kafka_bootstrap: str, postgres_schema: str, tmp_path: Path
) -> None:
    # TAG lives in another partition than the workflow: its moves are requested there
    # and decided by that partition's writer.
    assert partition_for(TAG, PARTITIONS) != partition_for(WORKFLOW, PARTITIONS)
    settings = cluster_settings(kafka_bootstrap, postgres_schema, tmp_path)
    async with services(settings) as ([projector], engines):
        apis = [Commands(engine) for engine in engines]
        told = await create_concurrently(apis, WORKFLOW)
        await check_versions(apis[0], WORKFLOW, told)
        await check_linear_history(apis[1], projector, WORKFLOW, len(told))
        await move_concurrently(apis, TAG, WORKFLOW)
        await check_linear_history(apis[0], projector, TAG, 2 * CREATIONS_PER_API)


async def test_a_restarted_decider_goes_on_from_the_log(
    kafka_bootstrap: str, postgres_schema: str, tmp_path: Path
) -> None:
    """Its state is restored from its partitions: the next version follows the last,
    and the tag's next move names the target it replaces."""
    settings = cluster_settings(kafka_bootstrap, postgres_schema, tmp_path)
    async with services(settings) as (_, engines):
        told = await create_concurrently([Commands(e) for e in engines], WORKFLOW, per_api=2)
    assert sorted(told.values()) == [1, 2, 3, 4]
    async with services(settings) as ([projector], engines):
        api = Commands(engines[0])
        again = await api.create_workflow(
            {"name": WORKFLOW, "nodes": [{"id": "a", "type": "noop"}]},
            tag=None,
            actor="t",
            trace_id="",
        )
        assert again["version"] == 5
        await check_linear_history(api, projector, WORKFLOW, 5)


async def test_two_deciders_share_the_partitions_one_writer_each(
    kafka_bootstrap: str, postgres_schema: str, tmp_path: Path
) -> None:
    """Two projector processes: the group gives each partition to one decider."""
    settings = cluster_settings(kafka_bootstrap, postgres_schema, tmp_path)
    async with services(settings, projectors=2) as (projectors, engines):
        deciders = [p.decider for p in projectors if p.decider is not None]
        assert len(deciders) == 2
        owned = [d.consumer.assignment for d in deciders]
        assert owned[0].isdisjoint(owned[1])
        assert len(owned[0] | owned[1]) == PARTITIONS
        apis = [Commands(engine) for engine in engines]
        names = ["orders", "invoices", "refunds"]
        assert len({partition_for(n, PARTITIONS) for n in names}) > 1
        told = await asyncio.gather(*(create_concurrently(apis, n, per_api=3) for n in names))
        for name, versions in zip(names, told, strict=True):
            await check_versions(apis[0], name, versions)
