"""Waiting for what happens in a run after something the agent appended.

An agent learns a patch's outcome (`PatchApplied`, `PatchRejected` or
`PatchReviewRequested`, all emitted by the coordinator after it folds the
`PatchProposed`) and a delegate's result (`NodeCompleted`/`NodeFailed` of the
delegated task) from the log itself: all of a run's events are in one partition of
`aob.runs`, in order, so the answer is after a known offset. The waiter reads that
partition forward from there, skipping other runs' records, and sleeps on the log's
append signal when it reaches the end. No read model is involved, so this works the
same on the embedded log and on Kafka, and nothing can be missed: the position is
taken before the answer can exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from aob.events.codec import CodecError, decode
from aob.events.log.port import EventLog
from aob.events.partitioner import partition_for
from aob.events.types import RUNS_TOPIC, TERMINAL_RUN_EVENTS, Event

T = TypeVar("T")


class RunFinished(Exception):
    """The run ended before the awaited event; the message says how."""


async def run_position(log: EventLog, run_id: str) -> tuple[int, int]:
    """(partition, next offset) of the run's partition of `aob.runs`, right now."""
    partition = partition_for(run_id, await log.partitions(RUNS_TOPIC))
    return partition, (await log.end_offsets(RUNS_TOPIC))[partition]


async def wait_for_run_event(
    log: EventLog,
    run_id: str,
    partition: int,
    offset: int,
    match: Callable[[Event], T | None],
    timeout: float,
) -> T:
    """The first non-None `match(event)` of the run's events from `offset` on.

    Raises RunFinished if the run ends first, TimeoutError after `timeout` s.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        records = await log.read(RUNS_TOPIC, partition, offset)
        for record in records:
            offset = record.offset + 1
            if record.key != run_id:
                continue
            try:
                event = decode(record.value)
            except CodecError:
                continue
            found = match(event)
            if found is not None:
                return found
            if isinstance(event.payload, TERMINAL_RUN_EVENTS):
                raise RunFinished(f"the run ended ({event.type}) first")
        if not records:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            await log.wait_for_append(min(remaining, 0.5))
