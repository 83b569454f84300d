"""Read-your-writes across processes: a writer without a projector of its own waits on
the read models' positions, which another process's projector advances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from aob.events.codec import encode
from aob.events.log.port import Append, Record
from aob.events.log.sqlite import SqliteEventLog
from aob.events.types import RUNS_TOPIC, WORKFLOWS_TOPIC, Event, RunSubmitted
from aob.projections.readmodels.port import AsyncReadModels, ThreadedReadModels
from aob.projections.readmodels.postgres import PostgresReadModels
from aob.projections.runtime.projector import ProjectorHost, ReadYourWrites

Stores = Callable[[], AbstractAsyncContextManager[tuple[AsyncReadModels, AsyncReadModels]]]


@pytest.fixture(params=["sqlite", "postgres"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    """Two handles on one read-model store, as the projector's process and another
    process's have: two connections to one file, or two pools on one schema."""

    @asynccontextmanager
    async def opened() -> AsyncIterator[tuple[AsyncReadModels, AsyncReadModels]]:
        stores: list[AsyncReadModels] = []
        try:
            for _ in range(2):
                if request.param == "sqlite":
                    stores.append(await ThreadedReadModels.open(tmp_path / "rm.db"))
                else:
                    dsn = request.getfixturevalue("postgres_schema")
                    stores.append(await PostgresReadModels.open(dsn, max_size=2))
            yield stores[0], stores[1]
        finally:
            for store in stores:
                await store.close()

    return opened


def submitted(run_id: str) -> Append:
    definition = {"name": "w", "nodes": [{"id": "a", "type": "noop"}]}
    event = Event(f"ev-{run_id}", run_id, 1, RunSubmitted(run_id, definition, {}, ["noop"]))
    return Append(RUNS_TOPIC, run_id, encode(event))


async def test_a_writer_waits_for_another_process_to_project_its_write(
    tmp_path: Path, two_stores: Stores
) -> None:
    log = await SqliteEventLog.open(tmp_path / "log.db")
    await log.create_topic(RUNS_TOPIC, 4)
    await log.create_topic(WORKFLOWS_TOPIC, 1)
    async with two_stores() as (projecting, reading):
        projector = ProjectorHost(log, projecting)
        await projector.start()
        writer = ReadYourWrites(log, reading, interval=0.005)  # no projector of its own
        try:
            records: list[Record] = await log.append([submitted("run_1")])
            assert not await writer.wait_for(records, timeout=0.1)  # nobody projects yet

            waiting = asyncio.create_task(writer.wait_for(records, timeout=5.0))
            also = asyncio.create_task(writer.wait_caught_up(timeout=5.0))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            assert await projector.step() == 1
            assert await waiting
            assert await also
            assert await reading.get_run("run_1") is not None
            # Positions reached stay reached: no store query for an older write.
            assert await writer.wait_for(records, timeout=0)
        finally:
            await writer.close()
            await log.close()


async def test_the_local_projector_wakes_a_writer_at_once(tmp_path: Path) -> None:
    log = await SqliteEventLog.open(tmp_path / "log.db")
    await log.create_topic(RUNS_TOPIC, 4)
    await log.create_topic(WORKFLOWS_TOPIC, 1)
    store = await ThreadedReadModels.open(tmp_path / "rm.db")
    projector = ProjectorHost(log, store)
    await projector.start()
    writer = ReadYourWrites(log, store, projector, interval=60)  # would never poll in time
    try:
        records = await log.append([submitted("run_2")])
        waiting = asyncio.create_task(writer.wait_for(records, timeout=5.0))
        await projector.step()
        assert await waiting
        assert projector.applied[records[0].position] == records[0].offset + 1
    finally:
        await writer.close()
        await store.close()
        await log.close()
