"""A group member commits on through a broker restart.

aiokafka's transactional sender ends for good when it loses the transaction
coordinator mid-transaction (a connection closed while it looks the coordinator up):
that producer's commits then fail forever. The member replaces it and tries the
transaction again once it knows the failed one was not committed, so a host rides out
a restart instead of dying, and appends nothing twice. (How it knows, also for a
commit that does not move the offset, is pinned in test_kafka_member_unsure_commit.py:
a restart cannot choose which transaction it breaks.)
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from aob.events.log.consumer import Consumer
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append, Record, TopicPartition
from aob.infra.kafka import RESTART_SESSION_TIMEOUT_MS, KafkaBroker

SESSION = 6.0
RECORDS = 3000  # one transaction each: more than the copying before and through the restart
AFTER_RESTART = 50  # commits once the broker is back, then the test stops copying


async def test_commits_go_on_through_a_broker_restart_and_append_nothing_twice(
    tmp_path: Path,
) -> None:
    broker = await asyncio.to_thread(
        KafkaBroker.start,
        tmp_path / "broker",
        die_with_parent=True,
        session_timeout_ms=RESTART_SESSION_TIMEOUT_MS,
    )
    topic, sink, group = (f"restart.{n}.{uuid.uuid4().hex[:8]}" for n in ("t", "sink", "g"))
    log = await KafkaEventLog.open(broker.bootstrap, request_timeout=60.0)
    member = Consumer(log, group, [topic], session_timeout=SESSION, max_records=1)
    tp = TopicPartition(topic, 0)
    try:
        await log.create_topic(topic, 1)
        await log.create_topic(sink, 1)
        await log.append([Append(topic, "k", str(i).encode()) for i in range(RECORDS)])
        await member.start()
        restarting: asyncio.Task[KafkaBroker] | None = None
        copied = after_restart = 0
        async with asyncio.timeout(240):
            while copied < RECORDS and after_restart < AFTER_RESTART:
                records = await member.poll(0.2)
                if not records:
                    continue
                # One transaction per batch: its copies and the offset past them.
                copies = [Append(sink, "k", r.value) for r in records]
                await member.commit({tp: copies}, offsets={tp: records[-1].offset + 1})
                copied += len(records)
                after_restart += restarting is not None and restarting.done()
                if restarting is None and copied >= RECORDS // 20:
                    restarting = asyncio.create_task(asyncio.to_thread(broker.restart))
            assert restarting is not None
            broker = await restarting
        assert after_restart > 0  # commits went on once the broker was back
        values = [r.value for r in await _everything(log, sink)]
        assert values == [str(i).encode() for i in range(copied)]  # each once, in order
        assert await log.committed(group, topic) == {0: copied}
        await member.close()
    finally:
        await log.close()
        await asyncio.to_thread(broker.stop, remove=True)


async def _everything(log: KafkaEventLog, topic: str) -> list[Record]:
    end = (await log.end_offsets(topic))[0]
    found: list[Record] = []
    offset = 0
    while offset < end:
        records = await log.read(topic, 0, offset, 500)
        if not records:
            break
        found += records
        offset = records[-1].offset + 1
    return found
