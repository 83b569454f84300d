"""A commit whose first transaction hangs past the request timeout (the broker stopped
answering: paused here, as a machine under load or a long GC pause does) is tried
again once the broker answers: the retries get a request timeout of their own, counted
from that first failure, instead of none left. It lands once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from pathlib import Path

from aob.events.log.consumer import Consumer
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append, Record, TopicPartition
from aob.infra.kafka import KafkaBroker

REQUEST_TIMEOUT = 3.0
SESSION = 30.0  # longer than the pause: the member stays the partition's owner


class FirstFailure(logging.Handler):
    """Set when the member logs that a commit failed and it tries a new producer."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "trying a new producer" in record.getMessage():
            self.seen.set()


async def test_a_commit_hung_past_the_request_timeout_is_tried_again(tmp_path: Path) -> None:
    broker = await asyncio.to_thread(KafkaBroker.start, tmp_path / "broker", die_with_parent=True)
    topic, sink, group = (f"hung.{n}.{uuid.uuid4().hex[:8]}" for n in ("t", "sink", "g"))
    log = await KafkaEventLog.open(broker.bootstrap, request_timeout=REQUEST_TIMEOUT)
    member = Consumer(log, group, [topic], session_timeout=SESSION)
    tp = TopicPartition(topic, 0)
    failure = FirstFailure()
    logging.getLogger("aob.events.log.kafka").addHandler(failure)
    try:
        await log.create_topic(topic, 1)
        await log.create_topic(sink, 1)
        await log.append([Append(topic, "k", b"input")])
        await member.start()
        await member.commit({tp: [Append(sink, "k", b"before")]}, offsets={tp: 0})

        os.kill(broker.pid, signal.SIGSTOP)
        try:
            commit = asyncio.create_task(
                member.commit({tp: [Append(sink, "k", b"through")]}, offsets={tp: 1})
            )
            async with asyncio.timeout(60):
                await failure.seen.wait()  # the first attempt gave up on the broker
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        async with asyncio.timeout(60):
            await commit

        assert [r.value for r in await _everything(log, sink)] == [b"before", b"through"]
        # The group's offset shows once the transaction's marker reaches it.
        async with asyncio.timeout(30):
            while await log.committed(group, topic) != {0: 1}:  # noqa: ASYNC110 - broker state
                await asyncio.sleep(0.1)
        await member.close()
    finally:
        logging.getLogger("aob.events.log.kafka").removeHandler(failure)
        await log.close()
        await asyncio.to_thread(broker.stop, remove=True)


async def _everything(log: KafkaEventLog, topic: str) -> list[Record]:
    """Every committed record of partition 0 (one read may return only some)."""
    end = (await log.end_offsets(topic))[0]
    found: list[Record] = []
    while (offset := found[-1].offset + 1 if found else 0) < end:
        records = await log.read(topic, 0, offset)
        if not records:
            break
        found += records
    return found
