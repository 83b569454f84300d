"""The coordinator host decides simple work in the batch that asks for it.

On the embedded log: a DAG of simple transforms (conditions and output included) ends
in the batch that folded its submission, with the events a worker would have
recorded and no task on any topic; work it cannot decide goes to its topic as
before; and a host killed between changelog writes is followed by one that folds the
recorded answers again (checked against the log) without evaluating anything twice.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from aob.events.codec import encode
from aob.events.ids import new_event_id
from aob.events.log.port import Append, EventLog, TopicPartition
from aob.events.log.sqlite import SqliteEventLog
from aob.events.types import (
    DEADLETTER_TOPIC,
    EXPRESSIONS_TOPIC,
    RUNS_TOPIC,
    Event,
    NodeCompleted,
    NodeScheduled,
    NodeStarted,
    RunCompleted,
    RunSubmitted,
    task_topic,
)
from aob.projections.runtime.changelog import create_changelog
from aob.projections.runtime.coordinator import CoordinatorHost
from aob.projections.runtime.divergence import audit_partition
from aob.projections.runtime.inline import MAX_INLINE_ANSWERS
from aob.workers.inline import InlineWork
from aob.workers.sandbox import SandboxSettings
from tests.coordinator.test_changelog_restore import drain, runs_log

PARTITIONS = 4  # as tests.coordinator.test_changelog_restore.runs_log reads
INLINE = InlineWork(SandboxSettings(), 16 * 1024)
TYPES = ["noop", "transform", "work"]
FANOUT_JOIN: dict[str, Any] = {
    "name": "fanout-join",
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expr": ".inputs.x + 1"}},
        {"id": "b", "type": "transform", "config": {"expr": ".nodes.a * 2"}},
        {"id": "c", "type": "transform", "config": {"expr": ".nodes.a * 3"}},
        {"id": "d", "type": "noop", "config": {"output": 4}},
        {"id": "e", "type": "transform", "config": {"expr": ".nodes.b + .nodes.c + .nodes.d"}},
    ],
    "edges": [
        {"from": "a", "to": "b"},
        {"from": "a", "to": "c", "when": ".nodes.a > 0"},
        {"from": "a", "to": "d"},
        {"from": "b", "to": "e"},
        {"from": "c", "to": "e"},
        {"from": "d", "to": "e"},
    ],
    "output": "{e: .nodes.e}",
}
# A node only a worker runs between two simple ones.
MIXED: dict[str, Any] = {
    "name": "mixed",
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expr": ".inputs.x + 1"}},
        {"id": "w", "type": "work"},
        {"id": "b", "type": "transform", "config": {"expr": ".nodes.w.n * 10"}},
    ],
    "edges": [{"from": "a", "to": "w"}, {"from": "w", "to": "b"}],
    "output": ".nodes.b",
}


async def opened(path: Path) -> SqliteEventLog:
    event_log = await SqliteEventLog.open(path)
    for topic in (RUNS_TOPIC, *map(task_topic, TYPES), EXPRESSIONS_TOPIC, DEADLETTER_TOPIC):
        await event_log.create_topic(topic, PARTITIONS)
    await create_changelog(event_log, PARTITIONS)
    return event_log


async def coordinator(event_log: EventLog, **options: Any) -> CoordinatorHost:
    host = CoordinatorHost(event_log, **options)
    await host.recover()
    return host


async def submit(event_log: EventLog, definition: dict[str, Any], count: int) -> list[str]:
    runs = [str(uuid.uuid4()) for _ in range(count)]
    events = [
        Event(new_event_id(), r, 1, RunSubmitted(r, definition, {"x": i}, TYPES), actor="test")
        for i, r in enumerate(runs)
    ]
    await event_log.append([Append(RUNS_TOPIC, e.key, encode(e)) for e in events])
    return runs


async def topic_size(event_log: EventLog, topic: str) -> int:
    ends = await event_log.end_offsets(topic)
    return sum(ends.values())


async def test_a_dag_of_simple_work_ends_in_the_batch_that_folds_its_submission(
    tmp_path: Path,
) -> None:
    async with await opened(tmp_path / "log.db") as event_log:
        host = await coordinator(event_log, inline=INLINE)
        runs = await submit(event_log, FANOUT_JOIN, 5)
        records = await host.consumer.poll(timeout=5.0)
        assert {r.key for r in records} == set(runs)
        await host.step(records)  # one batch: nothing else is folded

        events = await runs_log(event_log)
        outputs = {e.key: e.payload.output for e in events if isinstance(e.payload, RunCompleted)}
        assert outputs == {r: {"e": 2 * (x + 1) + 3 * (x + 1) + 4} for x, r in enumerate(runs)}
        assert host.states == {}
        for topic in (task_topic("transform"), EXPRESSIONS_TOPIC, DEADLETTER_TOPIC):
            assert await topic_size(event_log, topic) == 0
        # A worker's record of each node: scheduled, started (by `inline`), completed.
        per_node = Counter(
            (e.key, e.payload.node_id, e.type, e.actor)
            for e in events
            if isinstance(e.payload, NodeScheduled | NodeStarted | NodeCompleted)
        )
        assert per_node == {
            (r, n, kind, actor): 1
            for r in runs
            for n in "abcde"
            for kind, actor in (
                ("NodeScheduled", "coordinator"),
                ("NodeStarted", "worker:inline"),
                ("NodeCompleted", "worker:inline"),
            )
        }


async def test_without_inline_work_every_task_goes_to_its_topic(tmp_path: Path) -> None:
    async with await opened(tmp_path / "log.db") as event_log:
        host = await coordinator(event_log)
        runs = await submit(event_log, FANOUT_JOIN, 3)
        await drain(host)
        assert await topic_size(event_log, task_topic("transform")) == len(runs)  # each `a`
        assert set(host.states) == set(runs)


async def test_a_host_killed_between_changelog_writes_folds_the_recorded_answers_again(
    tmp_path: Path,
) -> None:
    """Answers are decided once: the next host folds what the log recorded (compared
    with what the fold emits, as for every event folded again) and evaluates nothing."""
    path = tmp_path / "log.db"
    event_log = await opened(path)
    host = await coordinator(event_log, inline=INLINE, changelog_interval=3600.0)
    runs = await submit(event_log, MIXED, 6)
    await drain(host)  # `a` decided in process, `w` sent to its worker
    assert await topic_size(event_log, task_topic("work")) == len(runs)
    await event_log.close()  # killed: its changelog never written

    async with await opened(path) as event_log:
        counting = Counting()
        again = await coordinator(event_log, inline=counting, changelog_interval=3600.0)
        # The submissions folded again, each `a` decided again as it was first: the
        # same answer as the one recorded, or the host would have stopped.
        assert again.diverged is None
        assert again.refolded_records == len(runs)
        asked = Counter((q.type, getattr(q.payload, "node_id", None)) for q in counting.asked)
        assert asked == {("NodeScheduled", "a"): len(runs), ("NodeScheduled", "w"): len(runs)}
        assert set(again.states) == set(runs)
        counting.asked.clear()
        completions = [
            Event(new_event_id(), r, 1, NodeCompleted(r, "w", 0, 1, {"n": i}), actor="worker:w")
            for i, r in enumerate(runs)
        ]
        await event_log.append([Append(RUNS_TOPIC, e.key, encode(e)) for e in completions])
        await drain(again)

        events = await runs_log(event_log)
        ended = {e.key: e.payload.output for e in events if isinstance(e.payload, RunCompleted)}
        assert ended == {r: 10 * i for i, r in enumerate(runs)}
        scheduled = Counter(
            (e.key, e.payload.node_id) for e in events if isinstance(e.payload, NodeScheduled)
        )
        assert scheduled == {(r, n): 1 for r in runs for n in ("a", "w", "b")}
        asked = Counter((q.type, getattr(q.payload, "node_id", None)) for q in counting.asked)
        assert asked == {
            ("NodeScheduled", "b"): len(runs),  # once: the answers read back (`a`'s
            ("ExpressionRequested", None): len(runs),  # included) are not decided again
            ("RunCompleted", None): len(runs),  # every emitted event is asked
        }


class Counting:
    """InlineWork that notes what it was asked."""

    def __init__(self) -> None:
        self.asked: list[Event] = []

    def __call__(self, event: Event) -> list[Event] | None:
        self.asked.append(event)
        return INLINE(event)


async def test_one_record_decides_at_most_its_share_and_the_rest_goes_to_the_worker(
    tmp_path: Path,
) -> None:
    loop = {
        "name": "loop",
        "nodes": [
            {"id": "tick", "type": "transform", "config": {"expr": "(.nodes.tick // 0) + 1"}}
        ],
        "edges": [{"from": "tick", "to": "tick", "loop": {"max_iterations": 200}}],
        "output": ".nodes.tick",
    }
    async with await opened(tmp_path / "log.db") as event_log:
        host = await coordinator(event_log, inline=INLINE)
        (run,) = await submit(event_log, loop, 1)
        await host.step(await host.consumer.poll(timeout=5.0))
        events = await runs_log(event_log)
        decided = [e.payload for e in events if isinstance(e.payload, NodeCompleted)]
        assert [d.iteration for d in decided] == list(range(MAX_INLINE_ANSWERS))
        # The next pass is the builtin worker's: its task is on the topic, once.
        assert await topic_size(event_log, task_topic("transform")) == 1
        assert set(host.states) == {run}


async def test_answers_of_runs_that_ended_are_not_folded_again_as_fresh_causes(
    tmp_path: Path,
) -> None:
    """A run decided whole in one batch never reaches the changelog; its marker is
    written past the submission but before the answers, and a later batch commits past
    those. A restore (and the audit) folding them again meets answers of a run it does
    not know: no cause whose recorded reactions it could check."""
    path = tmp_path / "log.db"
    event_log = await opened(path)
    host = await coordinator(event_log, inline=INLINE, changelog_interval=0)
    ended = await submit(event_log, FANOUT_JOIN, 8)
    records = await host.consumer.poll(timeout=5.0)
    assert len(records) == len(ended)
    await host.step(records)  # the marker lands right after the submissions
    host.changelog_interval = 3600.0  # and moves no more
    later = await submit(event_log, MIXED, 8)  # their batch commits past the answers
    await drain(host)
    committed = await event_log.committed("aob-coordinator", RUNS_TOPIC)
    await event_log.close()  # killed

    async with await opened(path) as event_log:
        again = await coordinator(event_log, inline=INLINE, changelog_interval=3600.0)
        assert again.diverged is None
        assert again.refolded_records > 16 * len(ended)  # the answers among them
        assert set(again.states) == set(later)
        for partition in range(PARTITIONS):
            tp = TopicPartition(RUNS_TOPIC, partition)
            audit = audit_partition(
                event_log, tp, committed.get(partition, 0), set_aside_by="service:x", inline=INLINE
            )
            assert await audit is None
        events = await runs_log(event_log)
        assert len({e.event_id for e in events}) == len(events)  # nothing appended twice
        assert {e.key for e in events if isinstance(e.payload, RunCompleted)} == set(ended)
