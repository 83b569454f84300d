"""Fixtures of the event log conformance suite, parametrized over the adapters.

Add an adapter by adding a factory to `ADAPTERS`: an async context manager that takes
the test's fixture request and temporary directory and yields an open `EventLog`.
Tests name their topics and groups with `unique`, so adapters backed by a shared store
(a Kafka cluster) need no cleanup between tests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import EventLog
from aob.events.log.prefixed import PrefixedEventLog
from aob.events.log.sqlite import SqliteEventLog

LogFactory = Callable[[pytest.FixtureRequest, Path], AbstractAsyncContextManager[EventLog]]


@asynccontextmanager
async def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    log = await SqliteEventLog.open(tmp_path / "events.db")
    try:
        yield log
    finally:
        await log.close()


@asynccontextmanager
async def _kafka(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    # The session's broker (tests/fixtures/kafka.py): errors, never skips, without one.
    log = await KafkaEventLog.open(request.getfixturevalue("kafka_bootstrap"))
    try:
        yield log
    finally:
        await log.close()


@asynccontextmanager
async def _prefixed(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    inner = await SqliteEventLog.open(tmp_path / "events.db")
    log = PrefixedEventLog(inner, "other.")
    try:
        yield log
    finally:
        await log.close()


ADAPTERS: dict[str, LogFactory] = {
    "kafka": _kafka,
    "prefixed": _prefixed,
    "sqlite": _sqlite,
}


@pytest.fixture(params=sorted(ADAPTERS))
async def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    async with ADAPTERS[request.param](request, tmp_path) as log:
        yield log


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Make a name (topic, group) no other test uses."""
    suffix = uuid.uuid4().hex[:12]
    return lambda name: f"test.{name}.{suffix}"
