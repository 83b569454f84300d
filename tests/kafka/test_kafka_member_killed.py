"""A group member killed (kill -9) in the middle of its commit's transaction: its open
transaction holds back every read_committed reader of the partitions it wrote to (the
last stable offset stops there) until someone ends it. The member that takes over its
partition ends it when it starts that partition's producer (same transactional id,
epoch bumped), so readers go on within about the session timeout, not the broker's
transaction timeout."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
import time
import uuid

from aob.events.log.consumer import Consumer
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append, Record, TopicPartition

SESSION = 3.0
# The session, the rebalance and a producer's start, on a busy shared machine; well
# under a transaction timeout's default of 60 s.
TAKEOVER_BOUND = SESSION + 12.0

# A member that owns the whole topic, appends to the sink in a commit and dies with
# that commit's transaction open: the offsets step never returns.
MEMBER = textwrap.dedent(
    """
    import asyncio, sys
    from aiokafka import AIOKafkaProducer
    from aob.events.log.consumer import Consumer
    from aob.events.log.kafka import KafkaEventLog
    from aob.events.log.port import Append, TopicPartition

    async def hang(self, offsets, group):
        await self.flush()  # the appends are in the log, uncommitted
        print("open", flush=True)
        await asyncio.Event().wait()

    async def main(bootstrap, topic, sink, group, session):
        AIOKafkaProducer.send_offsets_to_transaction = hang
        log = await KafkaEventLog.open(bootstrap)
        consumer = Consumer(log, group, [topic], session_timeout=float(session))
        await consumer.start()
        print("joined", flush=True)
        tp = TopicPartition(topic, 0)
        await consumer.commit({tp: [Append(sink, "k", b"in a transaction")]}, offsets={tp: 0})

    asyncio.run(main(*sys.argv[1:]))
    """
)


def unique(name: str) -> str:
    return f"test.kafka.{name}.{uuid.uuid4().hex[:12]}"


async def _line(process: asyncio.subprocess.Process, wanted: str) -> None:
    assert process.stdout is not None
    line = await process.stdout.readline()
    assert line.decode().strip() == wanted, line


async def test_a_killed_members_open_transaction_is_ended_by_the_next_owner(
    kafka_bootstrap: str,
) -> None:
    topic, sink, group = unique("t"), unique("sink"), unique("g")
    log = await KafkaEventLog.open(kafka_bootstrap)
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-c", MEMBER, kafka_bootstrap, topic, sink, group, str(SESSION)],
        stdout=asyncio.subprocess.PIPE,
    )
    successor = Consumer(log, group, [topic], session_timeout=SESSION)
    try:
        await log.create_topic(topic, 1)
        await log.create_topic(sink, 1)
        async with asyncio.timeout(60):
            await _line(process, "joined")
            await _line(process, "open")
        # Another member joins while the first holds the partition, as a restarted
        # instance would; then the first dies with its transaction open.
        joining = asyncio.create_task(successor.start())
        killed_at = time.monotonic()
        process.send_signal(signal.SIGKILL)
        await process.wait()
        after = await log.append([Append(sink, "k", b"after the kill")])

        async with asyncio.timeout(60):
            await joining
            while TopicPartition(topic, 0) not in successor.assignment:
                await successor.poll(0.05)
            taken_over = time.monotonic() - killed_at
            read: list[Record] = []
            while after[0].offset not in {r.offset for r in read}:
                read = await log.read(sink, 0, 0)
                if not read:
                    await log.wait_for_append(0.1)
            readable = time.monotonic() - killed_at

        print(f"taken over after {taken_over:.1f} s, readable after {readable:.1f} s")
        assert taken_over < TAKEOVER_BOUND
        assert readable < TAKEOVER_BOUND
        # The dead member's append was aborted: readers never see it.
        assert [r.value for r in read] == [b"after the kill"]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await successor.close()
        await log.close()
