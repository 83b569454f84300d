"""Cost of fencing on Kafka: append-and-commit steps per second, before and after.

"before": `KafkaEventLog.append_and_commit` (idempotent producer, then an offset
commit by a group-less committer; not fenced). "after": a group member's
`Consumer.commit` (one transaction per partition: appends and offset). Each step
appends `records` records for each of `partitions` input partitions and commits
their offsets; `concurrency` steps run at once (as hosts flush concurrently).
"after, aiokafka's retry pause": the same, with aiokafka's own 20 ms pause before a
transaction's first partition is added again after CONCURRENT_TRANSACTIONS (the
previous commit's markers not yet written), instead of the adapter's.

    .venv/bin/python -m bench.log_groups --bootstrap 127.0.0.1:9092
    (without --bootstrap, a private broker is started from aob.infra.kafka)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aiokafka.producer.sender

from aob.events.log.consumer import Consumer
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append, TopicPartition
from aob.infra.kafka import KafkaBroker

_AIOKAFKA_RETRY = 0.02  # s: aiokafka's BACKOFF_OVERRIDE


async def _steps_per_second(bootstrap: str, fenced: bool, args: argparse.Namespace) -> float:
    suffix = uuid.uuid4().hex[:8]
    source, sink, group = f"bench.src.{suffix}", f"bench.sink.{suffix}", f"bench.g.{suffix}"
    async with await KafkaEventLog.open(bootstrap) as log:
        await log.create_topic(source, args.partitions)
        await log.create_topic(sink, args.partitions)
        consumer = Consumer(log, group, [source])
        if fenced:
            await consumer.start()
        owned = [TopicPartition(source, p) for p in range(args.partitions)]
        counter = 0

        async def step() -> None:
            nonlocal counter
            counter += 1
            appends = {
                tp: [Append(sink, f"k{tp.partition}", b"x" * 200) for _ in range(args.records)]
                for tp in owned
            }
            offsets = dict.fromkeys(owned, counter)
            if fenced:
                await consumer.commit(appends, offsets=offsets)
            else:
                flat = [a for records in appends.values() for a in records]
                await log.append_and_commit(flat, group, offsets)

        await step()  # warm-up: connections, producers
        started = time.perf_counter()
        deadline = started + args.seconds
        steps = 0
        while time.perf_counter() < deadline:
            await asyncio.gather(*(step() for _ in range(args.concurrency)))
            steps += args.concurrency
        elapsed = time.perf_counter() - started
        await consumer.close()
        return steps / elapsed


async def main(args: argparse.Namespace) -> None:
    bootstrap = args.bootstrap
    broker = None
    if bootstrap is None:
        broker = KafkaBroker.start(Path(tempfile.mkdtemp()), die_with_parent=True)
        bootstrap = broker.bootstrap
    adapters = aiokafka.producer.sender.BACKOFF_OVERRIDE
    variants = [
        ("before (append, then commit)", False, adapters),
        ("after (fenced, transactional)", True, adapters),
        ("after, aiokafka's retry pause", True, _AIOKAFKA_RETRY),
    ]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    try:
        for _ in range(args.rounds):  # rounds interleaved: the machine's load drifts
            for name, fenced, retry in variants:
                aiokafka.producer.sender.BACKOFF_OVERRIDE = retry
                rates[name].append(await _steps_per_second(bootstrap, fenced, args))
        for name, found in rates.items():
            print(
                f"{name}: median {statistics.median(found):.1f} steps/s "
                f"({args.partitions} partitions x {args.records} records per step, "
                f"concurrency {args.concurrency}; rounds: {', '.join(f'{r:.1f}' for r in found)})"
            )
        aiokafka.producer.sender.BACKOFF_OVERRIDE = adapters
    finally:
        if broker is not None:
            broker.stop(remove=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--records", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
