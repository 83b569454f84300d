"""The agent tool catalog sets poison on `aob.tools` aside once. Every catalog folds the
topic from offset 0 when its process starts; before, each start appended another dead
letter for the same record (the listing hid them: same id). On the embedded log and on
Kafka, through the log's own committed offsets."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aob.events.codec import decode, encode
from aob.events.log.port import Append, EventLog, Record
from aob.events.types import (
    DEADLETTER_TOPIC,
    TOOLS_TOPIC,
    Event,
    RecordDeadLettered,
    ToolRegistered,
)
from aob.platform.engine import open_log
from aob.platform.settings import Settings
from aob.workers.agent.catalog import CATALOG_SERVICE, ToolCatalog
from tests.poison.harness import GARBAGE, UNKNOWN_FINGERPRINT, engine


@pytest.fixture(params=["embedded", "kafka"])
async def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    if request.param == "kafka":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        prefix = f"catalog.{uuid.uuid4().hex[:12]}."
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]  # pydantic-settings' init option
            data_dir=tmp_path,
            kafka_bootstrap=bootstrap,
            topic_prefix=prefix,
            kafka_poll_interval=0.02,
        )
    log = await open_log(settings, "catalog-test")
    try:
        for topic in (TOOLS_TOPIC, DEADLETTER_TOPIC):
            await log.create_topic(topic, 1)
        yield log
    finally:
        await log.close()


def tool_event(name: str) -> bytes:
    registered = ToolRegistered(name, "pipeline", {"steps": [{"op": "top_k", "k": 1}]})
    return encode(Event(f"tool-{name}", name, 1, registered))


async def letters_for(log: EventLog, record: Record) -> list[RecordDeadLettered]:
    """The dead letters on the topic itself (not the listing, which shows an id once)."""
    found: list[RecordDeadLettered] = []
    end = (await log.end_offsets(DEADLETTER_TOPIC)).get(0, 0)
    offset = 0
    while offset < end:
        records = await log.read(DEADLETTER_TOPIC, 0, offset)
        for letter in records:
            payload = decode(letter.value).payload
            assert isinstance(payload, RecordDeadLettered)
            if (payload.source_topic, payload.offset) == (record.topic, record.offset):
                found.append(payload)
        offset = records[-1].offset + 1
    return found


async def test_each_poison_record_is_dead_lettered_once_over_restarts(
    event_log: EventLog,
) -> None:
    [before] = await event_log.append([Append(TOOLS_TOPIC, "before", tool_event("before"))])
    [garbage] = await event_log.append([Append(TOOLS_TOPIC, "bad", GARBAGE)])
    await event_log.append([Append(TOOLS_TOPIC, "after", tool_event("after"))])
    for _ in range(3):  # three processes starting (or restarting) in turn
        catalog = ToolCatalog()
        assert await catalog.catch_up(event_log)
        assert catalog.get("before", tenant=None) is not None
        assert catalog.get("after", tenant=None) is not None  # the fold went past it
    [letter] = await letters_for(event_log, garbage)
    assert letter.service == CATALOG_SERVICE
    assert letter.reason.startswith("CodecError"), letter.reason
    assert letter.value == GARBAGE
    committed = await event_log.committed(CATALOG_SERVICE, TOOLS_TOPIC)
    assert committed[garbage.partition] == garbage.offset + 1 > before.offset

    # New poison later gets its own letter, once, and the old one none again.
    [newer] = await event_log.append([Append(TOOLS_TOPIC, "bad2", UNKNOWN_FINGERPRINT)])
    for _ in range(2):
        await ToolCatalog().catch_up(event_log)
    assert len(await letters_for(event_log, newer)) == 1
    assert len(await letters_for(event_log, garbage)) == 1


async def test_a_restarted_engine_does_not_set_catalog_poison_aside_again(
    tmp_path: Path,
) -> None:
    async with engine(tmp_path) as aob:
        garbage = await aob.append(TOOLS_TOPIC, "bad", GARBAGE)
        await aob.engine.tools.catch_up(aob.engine.log)
        assert len(await letters_for(aob.engine.log, garbage)) == 1
    for _ in range(2):
        async with engine(tmp_path) as aob:
            await aob.normal_run_completes()
            assert len(await letters_for(aob.engine.log, garbage)) == 1
            assert [item["service"] for item in await aob.letters_of(garbage)] == [CATALOG_SERVICE]
