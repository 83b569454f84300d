"""The worker host against poison: a handler that raises, an output that cannot be
encoded, an outcome the log refuses (too large, as Kafka refuses over 1 MB) and a log
that is down. Real `WorkerHost`s on the engine's real log; the last two through a log
that refuses what Kafka would."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from aob.events.codec import decode
from aob.events.log.port import (
    Append,
    CommitUnknown,
    EventLog,
    LogError,
    Record,
    TopicPartition,
)
from aob.events.types import NodeScheduled, task_topic
from aob.workers.host import NodeType, WorkerHost
from tests.poison.harness import PoisonAob, engine

KIND = "custom"


def flow(output: Any) -> dict[str, Any]:
    return {
        "name": "custom",
        "nodes": [{"id": "c", "type": KIND, "config": {"output": output}}],
        "output": ".nodes.c",
    }


def deep(levels: int) -> Any:
    value: Any = None
    for _ in range(levels):
        value = [value]
    return value


async def handler(task: NodeScheduled) -> Any:
    what = task.config["output"]
    if what == "raise":
        raise RuntimeError("handler bug")
    if what == "deep":
        return deep(5000)  # cannot be encoded (RecursionError in json)
    if what == "big":
        return "x" * 50_000
    return what


class RefusingLog:
    """The engine's log, but refusing appends over `max_bytes` (as Kafka refuses a
    message over its limit), or every write once `down` is set."""

    def __init__(self, inner: EventLog, max_bytes: int = 20_000) -> None:
        self.inner = inner
        self.max_bytes = max_bytes
        self.down = False
        # Commits with appends fail with their outcome unknown (a broker gone mid-commit).
        self.unsure = False
        self.appended: list[Append] = []  # what came through `append`

    def _check(self, records: Sequence[Append]) -> None:
        if self.down:
            raise LogError("the log is down")
        for record in records:
            if len(record.value) > self.max_bytes:
                raise LogError(f"message of {len(record.value)} bytes is too large")

    async def append(self, records: Sequence[Append]) -> list[Record]:
        self._check(records)
        self.appended += records
        return await self.inner.append(records)

    async def append_and_commit(
        self, records: Sequence[Append], group: str, offsets: Mapping[TopicPartition, int]
    ) -> list[Record]:
        self._check(records)
        return await self.inner.append_and_commit(records, group, offsets)

    async def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        self._check([])
        await self.inner.commit(group, offsets)

    async def join(self, *args: Any, **kwargs: Any) -> Any:
        """A group member whose commits are refused the same way."""
        member = await self.inner.join(*args, **kwargs)
        refusing = self

        class RefusingMember:
            async def commit(
                self,
                appends: Mapping[TopicPartition, Sequence[Append]],
                offsets: Mapping[TopicPartition, int],
                done: Mapping[TopicPartition, Sequence[range]] | None = None,
            ) -> list[Record]:
                refusing._check([a for records in appends.values() for a in records])
                if refusing.unsure and any(appends.values()):
                    raise CommitUnknown("the broker went away mid-commit")
                return await member.commit(appends, offsets, done)

            def __getattr__(self, name: str) -> Any:
                return getattr(member, name)

        return RefusingMember()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def with_worker(
    tmp_path: Path,
    test: Callable[[PoisonAob, WorkerHost, RefusingLog, asyncio.Task[None]], Awaitable[None]],
) -> None:
    async with engine(tmp_path, node_types=[KIND]) as aob:
        log = RefusingLog(aob.engine.log)
        host = WorkerHost(log, NodeType(KIND, handler), worker_id="test")
        await host.start()
        stop = asyncio.Event()
        running = asyncio.create_task(host.run(stop))
        try:
            await test(aob, host, log, running)
        finally:
            stop.set()
            await asyncio.gather(running, return_exceptions=True)


async def node_error(aob: PoisonAob, run_id: str) -> str:
    run = await aob.finished(run_id)
    assert run["status"] == "failed", run
    [node] = run["nodes"]
    assert node["status"] == "failed", node
    error: str = node["error"]
    assert "task set aside as dead letter" in error
    return error


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("raise", "the custom handler raised RuntimeError: handler bug"),
        ("deep", "output cannot be recorded (CodecError"),
        ("big", "the log refused its outcome (LogError: message of"),
    ],
)
async def test_a_task_the_worker_cannot_record_fails_its_node_and_the_worker_goes_on(
    tmp_path: Path, output: str, reason: str
) -> None:
    async def test(
        aob: PoisonAob, host: WorkerHost, log: RefusingLog, _: asyncio.Task[None]
    ) -> None:
        run_id = await aob.submit(flow(output))
        assert reason in await node_error(aob, run_id)
        attempts = [e for e in await aob.events(run_id) if e["type"] == "NodeScheduled"]
        assert len(attempts) == 1, "a failure no retry can mend is not retried"
        [letter] = [x for x in await aob.dead_letters() if x["run_id"] == run_id]
        assert (letter["service"], letter["type"]) == (host.group, "NodeScheduled")
        assert reason in letter["reason"]
        fine = await aob.finished(await aob.submit(flow("fine")))
        assert (fine["status"], fine["output"]) == ("completed", "fine")
        committed = await aob.engine.log.committed(host.group, task_topic(KIND))
        ends = await aob.engine.log.end_offsets(task_topic(KIND))
        assert committed == ends  # nothing pinned: a restart re-executes nothing

    await with_worker(tmp_path, test)


async def test_a_log_outage_stops_the_worker_host_instead_of_wedging_it(tmp_path: Path) -> None:
    async def test(
        aob: PoisonAob, host: WorkerHost, log: RefusingLog, running: asyncio.Task[None]
    ) -> None:
        log.down = True
        run_id = await aob.submit(flow("first"))
        # run() ends with the log's error (the engine then turns unhealthy and exits)...
        with pytest.raises(LogError, match="the log is down"):
            await asyncio.wait_for(running, 10)
        # ...and stops taking tasks: what came after it stays for the next host.
        log.down = False
        await aob.submit(flow("second"))
        assert (await aob.run(run_id))["status"] == "running"
        committed = await aob.engine.log.committed(host.group, task_topic(KIND))
        assert not any(committed.values())
        restarted = WorkerHost(log, NodeType(KIND, handler), worker_id="again")
        await restarted.start()
        stop = asyncio.Event()
        again = asyncio.create_task(restarted.run(stop))
        try:
            run = await aob.finished(run_id)
            assert (run["status"], run["output"]) == ("completed", "first")
        finally:
            stop.set()
            await again

    await with_worker(tmp_path, test)


async def test_a_commit_of_unknown_outcome_stops_the_host_without_appending_again(
    tmp_path: Path,
) -> None:
    """Outcomes whose commit may have been written are not appended one by one (as a
    refused batch is): that could record them twice. The host stops instead."""

    async def test(
        aob: PoisonAob, host: WorkerHost, log: RefusingLog, running: asyncio.Task[None]
    ) -> None:
        log.unsure = True
        await aob.submit(flow("first"))
        with pytest.raises(CommitUnknown):
            await asyncio.wait_for(running, 10)
        announced = [decode(a.value).type for a in log.appended]
        assert announced == ["NodeStarted"]  # before it ran; never its outcome

    await with_worker(tmp_path, test)
