"""Recovery compares what the fold re-emits with what the log recorded (issue 14).

A coordinator that restores a partition folds again the events between its changelog
marker and the committed offset. Here the changelog is lost (as after an upgrade from
a version without one, or a restored backup of the log alone), so a new host re-folds
every event of aob.runs: with the fold unchanged it recovers silently and carries the
runs on; with a fold that now decides differently it refuses, naming the run and the
event, commits nothing, and its `run` raises (the engine then marks itself unhealthy
and the server exits 70: tests/coordinator/test_recovery_check_server.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from aob.events.log.port import EventLog, Record
from aob.events.types import (
    RUNS_TOPIC,
    LoopExhausted,
    NodeScheduled,
    Payload,
    RunCompleted,
)
from aob.projections.coordinator import fold as fold_module
from aob.projections.runtime.changelog import CHANGELOG_TOPIC
from aob.projections.runtime.coordinator import CoordinatorHost
from aob.projections.runtime.divergence import RecoveryDiverged
from tests.coordinator.test_changelog_restore import (
    complete,
    drain,
    opened_log,
    runs_log,
    started,
    submit,
)


@pytest.fixture(params=["embedded", "kafka"])
async def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    async with opened_log(request, tmp_path) as log:
        yield log


class WithoutChangelog:
    """The log as a host whose changelog was lost sees it: a restore folds aob.runs
    again from offset 0 up to the committed offset."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 500
    ) -> list[Record]:
        if topic == CHANGELOG_TOPIC:
            return []
        return await self.inner.read(topic, partition, offset, max_records)


async def history(event_log: EventLog) -> tuple[list[str], list[str]]:
    """Runs processed by a first host and left behind: (finished, in flight)."""
    host = await started(event_log)
    finished = await submit(event_log, 4)
    in_flight = await submit(event_log, 4)
    await drain(host)
    await complete(event_log, finished + in_flight, "a")
    await drain(host)
    await complete(event_log, finished, "b")
    await drain(host)
    await host.close()
    return finished, in_flight


async def restarted_without_changelog(event_log: EventLog) -> CoordinatorHost:
    host = CoordinatorHost(cast(EventLog, WithoutChangelog(event_log)))
    await host.recover()
    return host


async def test_an_unaltered_fold_recovers_silently_and_carries_the_runs_on(
    event_log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    finished, in_flight = await history(event_log)
    recorded = len(await runs_log(event_log))
    with caplog.at_level(logging.WARNING):
        host = await restarted_without_changelog(event_log)
    # Every event of aob.runs up to the committed offsets folded again (on Kafka, the
    # last batch's own appends may lie past them).
    assert recorded // 2 < host.refolded_records <= recorded
    assert host.diverged is None
    assert not [r for r in caplog.records if r.name.startswith("aob.projections")]
    assert sorted(host.states) == sorted(in_flight)

    await complete(event_log, in_flight, "b")
    await drain(host)
    ended = Counter(e.key for e in await runs_log(event_log) if isinstance(e.payload, RunCompleted))
    assert ended == dict.fromkeys(finished + in_flight, 1)
    await host.close()


def altered_task(payload: Payload) -> list[Payload]:
    """A fold whose tasks now carry another config."""
    if isinstance(payload, NodeScheduled):
        return [dataclasses.replace(payload, config={"changed": True})]
    return [payload]


def dropped_task(payload: Payload) -> list[Payload]:
    """A fold that no longer schedules node `b`."""
    if isinstance(payload, NodeScheduled) and payload.node_id == "b":
        return []
    return [payload]


def extra_warning(payload: Payload) -> list[Payload]:
    """A fold that now also warns whenever it schedules."""
    if isinstance(payload, NodeScheduled):
        return [payload, LoopExhausted(payload.run_id, payload.node_id, payload.node_id, 0)]
    return [payload]


ALTERATIONS: dict[str, tuple[Callable[[Payload], list[Payload]], str]] = {
    "changed payload": (
        altered_task,
        "differs from what the log recorded in config: recorded {}, the fold now emits "
        "{'changed': True}",
    ),
    "no longer emitted": (dropped_task, "but the fold no longer emits it"),
    "newly emitted": (extra_warning, "but the log never recorded it"),
}


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
async def test_an_altered_fold_makes_recovery_refuse_naming_the_run_and_the_event(
    event_log: EventLog,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    alteration: str,
) -> None:
    _, in_flight = await history(event_log)
    before = await runs_log(event_log)
    changelog_before = await changelog_records(event_log)
    alter, said = ALTERATIONS[alteration]
    emit = fold_module._Step.emit

    def altered_emit(step: fold_module._Step, payload: Payload) -> None:
        for each in alter(payload):
            emit(step, each)

    monkeypatch.setattr(fold_module._Step, "emit", altered_emit)
    with caplog.at_level(logging.CRITICAL):
        host = await restarted_without_changelog(event_log)

    assert host.diverged is not None
    divergence = host.diverged.divergence
    named = [e for e in before if e.event_id == divergence.event_id]
    if alteration == "newly emitted":
        assert named == []  # the fold's new event, under the id it derives
        assert divergence.event_type == "LoopExhausted"
    else:
        assert [(e.key, e.type) for e in named] == [(divergence.run_id, "NodeScheduled")]
    assert any(e.event_id == divergence.cause_id for e in before)
    assert said in divergence.detail
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL][:1]
    assert "the fold diverges from the log" in line
    assert f"run {divergence.run_id}: event {divergence.event_id}" in line
    assert f"{RUNS_TOPIC}[" in line

    # Nothing of the refused partitions was committed or appended; the host dies.
    assert len(await runs_log(event_log)) == len(before)
    assert await changelog_records(event_log) == changelog_before
    with pytest.raises(RecoveryDiverged):
        await asyncio.wait_for(host.run(asyncio.Event()), timeout=30)
    assert divergence.run_id in in_flight + [e.key for e in before]


async def changelog_records(event_log: EventLog) -> int:
    total = 0
    for partition in range(await event_log.partitions(CHANGELOG_TOPIC)):
        offset = 0
        while records := await event_log.read(CHANGELOG_TOPIC, partition, offset, 1000):
            total += len(records)
            offset = records[-1].offset + 1
    return total
