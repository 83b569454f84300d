"""Followers of the embedded log: woken by appends to their topics only, and served the
latest records from memory exactly as the file holds them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aob.events.log import sqlite as sqlite_log
from aob.events.log.consumer import Consumer
from aob.events.log.port import Append
from aob.events.log.sqlite import SqliteEventLog


async def test_a_watcher_wakes_for_its_topics_only(tmp_path: Path) -> None:
    async with await SqliteEventLog.open(tmp_path / "log.db") as log:
        await log.create_topic("mine", 1)
        await log.create_topic("other", 1)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        unwatch = log.watch(["mine"], waiter)

        await log.append([Append("other", "k", b"x")])
        assert not waiter.done()
        await log.append([Append("mine", "k", b"y")])
        assert waiter.done()

        unwatch()
        later: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        log.watch(["mine"], later)()  # watching stopped at once
        await log.append([Append("mine", "k", b"z")])
        assert not later.done()


async def test_a_group_less_consumer_is_not_woken_by_other_topics(tmp_path: Path) -> None:
    async with await SqliteEventLog.open(tmp_path / "log.db") as log:
        await log.create_topic("mine", 1)
        await log.create_topic("other", 1)
        consumer = Consumer(log, None, ["mine"])
        await consumer.start()
        polling = asyncio.create_task(consumer.poll(timeout=5.0))
        await asyncio.sleep(0)  # the poll is waiting
        await log.append([Append("other", "k", b"x")])
        await asyncio.sleep(0)
        assert not polling.done()
        await log.append([Append("mine", "k", b"y")])
        records = await asyncio.wait_for(polling, 5.0)
        assert [(r.topic, r.value) for r in records] == [("mine", b"y")]


async def test_followed_records_read_from_memory_equal_those_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_log, "_TAIL_BYTES", 64)  # a few records, then evicted
    path = tmp_path / "log.db"
    async with await SqliteEventLog.open(path) as log:
        await log.create_topic("t", 2)
        await log.append([Append("t", f"k{i}", b"before") for i in range(5)])  # not followed
        log.watch(["t"], asyncio.get_running_loop().create_future())
        for batch in range(20):
            await log.append([Append("t", f"k{i}", b"v%d.%d" % (batch, i)) for i in range(3)])
        ends = await log.end_offsets("t")
        live = {
            (p, start): await log.read("t", p, start, 7)
            for p in range(2)
            for start in range(ends[p])
        }
    async with await SqliteEventLog.open(path) as reopened:  # nothing in memory
        for (p, start), records in live.items():
            assert records == await reopened.read("t", p, start, 7)
