"""Hand-built event histories with fake log positions, and stores to apply them to.

Every test that takes `store` or `open_store` runs once per engine: SQLite, SQLite
behind the async interface (`ThreadedReadModels`), and Postgres, the async ones
driven through `Blocking`, so all answer the same tests.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aob.events.types import (
    RUNS_TOPIC,
    WORKFLOWS_TOPIC,
    ApprovalDecided,
    ApprovalRequested,
    Event,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    PatchApplied,
    PatchProposed,
    PatchRejected,
    Payload,
    RunCancelled,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    RunSubmitted,
    TagMoved,
    TimerFired,
    TimerSet,
    WorkflowCreated,
)
from aob.projections.readmodels import Position, SqliteReadModels
from aob.projections.readmodels.port import AsyncReadModels, ThreadedReadModels
from aob.projections.readmodels.postgres import PostgresReadModels
from tests.fixtures.postgres import PostgresSchemas

T = TypeVar("T")

PARTITIONS = 3

DEF_V1: dict[str, Any] = {
    "name": "review",
    "nodes": [{"id": "fetch", "type": "http"}],
    "edges": [],
}
DEF_V2: dict[str, Any] = {
    "name": "review",
    "nodes": [
        {"id": "fetch", "type": "http"},
        {"id": "legacy", "type": "cobol"},
        {"id": "summarize", "type": "llm"},
    ],
    "edges": [{"source": "fetch", "target": "summarize"}],
}
DEF_INGEST: dict[str, Any] = {"name": "ingest", "nodes": [{"id": "load", "type": "sql"}]}
ADD_REVIEW = [
    {"op": "add", "path": "/nodes/-", "value": {"id": "review", "type": "approval"}},
    {"op": "add", "path": "/edges/-", "value": {"source": "fetch", "target": "review"}},
]

Batch = list[tuple[Position, Event]]


class Script:
    """Events in log order, each at the next offset of its key's partition."""

    def __init__(self) -> None:
        self.items: Batch = []
        self.marks: dict[str, int] = {}
        self._next: dict[tuple[str, int], int] = {}

    def add(self, key: str, at: int, payload: Payload, actor: str = "system") -> Event:
        event = Event(
            f"ev-{len(self.items)}", key, at, payload, trace_id=f"trace-{key}", actor=actor
        )
        return self.append(event)

    def append(self, event: Event) -> Event:
        """Append `event` as is: re-appending one models a producer's retry."""
        workflow_event = isinstance(event.payload, WorkflowCreated | TagMoved)
        topic = WORKFLOWS_TOPIC if workflow_event else RUNS_TOPIC
        partition = zlib.crc32(event.key.encode()) % PARTITIONS
        offset = self._next.get((topic, partition), 0)
        self._next[topic, partition] = offset + 1
        self.items.append((Position(topic, partition, offset), event))
        return event

    def mark(self, name: str) -> None:
        self.marks[name] = len(self.items)

    def until(self, name: str) -> Batch:
        return self.items[: self.marks[name]]


def _scheduled(run_id: str, node_id: str, node_type: str, attempt: int = 1) -> NodeScheduled:
    return NodeScheduled(run_id, node_id, node_type, 0, attempt, {}, {"inputs": {}}, 5_000)


def _timer(run_id: str, node_id: str, purpose: str, fire_at: int, attempt: int = 1) -> TimerSet:
    timer_id = f"{run_id}/{node_id}/0/{attempt}/{purpose}"
    return TimerSet(run_id, timer_id, fire_at, purpose, node_id, 0, attempt)


def _workflows(s: Script) -> None:
    s.add("review", 1_000, WorkflowCreated("review", 1, DEF_V1), actor="alice")
    s.add("prod", 1_500, TagMoved("prod", "review", 1), actor="alice")
    s.add("review", 2_000, WorkflowCreated("review", 2, DEF_V2), actor="alice")
    s.add("prod", 2_500, TagMoved("prod", "review", 2, "review", 1), actor="bob")
    s.add("ingest", 3_000, WorkflowCreated("ingest", 1, DEF_INGEST), actor="carol")


def _run_r1(s: Script) -> None:
    """Skip with warning, failure + retry, patches, approval, completion."""
    r = "r1"
    inputs = {"url": "https://example.org"}
    known = ["http", "llm", "approval"]
    s.add(r, 10_000, RunSubmitted(r, DEF_V2, inputs, known, "review", 2, "prod"), actor="alice")
    s.add(r, 10_001, NodeSkipped(r, "legacy", 0, "unknown node type 'cobol'", warning=True))
    s.add(r, 10_002, _scheduled(r, "fetch", "http"))
    s.add(r, 10_010, NodeStarted(r, "fetch", 0, 1, "w1"))
    s.add(r, 10_011, _timer(r, "fetch", "timeout", 15_010))
    s.add(r, 10_020, NodeFailed(r, "fetch", 0, 1, "connection reset"))
    s.add(r, 10_021, _timer(r, "fetch", "retry", 11_020))
    s.mark("r1_retrying")
    s.add(r, 11_020, TimerFired(r, "r1/fetch/0/1/retry"))
    s.add(r, 11_021, _scheduled(r, "fetch", "http", attempt=2))
    s.mark("r1_rescheduled")
    s.add(r, 11_030, NodeStarted(r, "fetch", 0, 2, "w2"))
    s.add(r, 11_040, NodeCompleted(r, "fetch", 0, 2, {"status": 200, "body": "hello"}))
    s.add(r, 11_050, PatchProposed(r, "p1", ADD_REVIEW, "needs a human"), actor="agent")
    s.mark("r1_patch_proposed")
    s.add(r, 11_060, PatchApplied(r, "p1", 1, ["review"]))
    s.mark("r1_patch_applied")
    s.add(r, 11_070, PatchProposed(r, "p2", [{"op": "remove", "path": "/nodes/0"}], "drop"))
    s.add(r, 11_080, PatchRejected(r, "p2", ["node fetch already completed"]))
    s.add(r, 11_100, _scheduled(r, "summarize", "llm"))
    s.add(r, 11_100, _scheduled(r, "review", "approval"))
    s.add(r, 11_110, NodeStarted(r, "summarize", 0, 1, "w1"))
    s.add(r, 11_111, _timer(r, "summarize", "timeout", 99_000))
    approval = ApprovalRequested(r, "a1", "review", 0, "Publish?", {"draft": "hi"}, ["bob"], 90_000)
    s.add(r, 11_120, approval)
    s.mark("r1_approval_pending")
    s.add(r, 11_200, NodeCompleted(r, "summarize", 0, 1, {"summary": "hi"}))
    s.add(r, 12_000, ApprovalDecided(r, "a1", "approve", "bob", "ship it"), actor="bob")
    s.add(r, 12_001, NodeCompleted(r, "review", 0, 1, {"approved": True}))
    s.add(r, 12_002, RunCompleted(r, {"summary": "hi"}))


def _run_r2(s: Script) -> None:
    """Cancelled while a node runs, a timeout timer is set and an approval is pending."""
    r = "r2"
    s.add(r, 20_000, RunSubmitted(r, DEF_V1, {}, ["http"], "review", 1), actor="carol")
    s.add(r, 20_001, _scheduled(r, "fetch", "http"))
    s.add(r, 20_002, _timer(r, "fetch", "timeout", 25_001))
    s.add(r, 20_003, ApprovalRequested(r, "a2", "gate", 0, "Go?"))
    s.mark("r2_before_cancel")
    s.add(r, 20_010, RunCancelRequested(r, "no longer needed"), actor="carol")
    s.add(r, 20_011, RunCancelled(r, "no longer needed"))


def _run_r3(s: Script) -> None:
    """Fails on a non-retryable node error."""
    r = "r3"
    s.add(r, 30_000, RunSubmitted(r, DEF_INGEST, {}, ["sql"], "ingest", 1))
    s.add(r, 30_001, _scheduled(r, "load", "sql"))
    s.add(r, 30_002, NodeFailed(r, "load", 0, 1, "syntax error", retryable=False))
    s.add(r, 30_003, RunFailed(r, "node load failed: syntax error", "load"))


def _run_r4(s: Script) -> None:
    """Ad hoc (no workflow id), still running with a retry timer set."""
    r = "r4"
    s.add(r, 40_000, RunSubmitted(r, {"nodes": [{"id": "wait", "type": "sleep"}]}, {}, ["sleep"]))
    s.add(r, 40_001, _scheduled(r, "wait", "sleep"))
    s.add(r, 40_002, NodeFailed(r, "wait", 0, 1, "boom"))
    s.add(r, 40_003, _timer(r, "wait", "retry", 41_002))


@pytest.fixture
def script() -> Script:
    s = Script()
    _workflows(s)
    _run_r1(s)
    _run_r2(s)
    _run_r3(s)
    _run_r4(s)
    return s


ENGINES = ("sqlite", "sqlite-threaded", "postgres")


class LoopThread:
    """An event loop running in a thread of its own, for driving async code from sync
    tests; a pytest-asyncio loop would only run while an async test runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, job: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(job, self.loop).result(timeout=60)

    def close(self) -> None:
        self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Blocking:
    """An async store seen through sync calls, so one test body covers every engine:
    `store.get_run(x)` runs `await async_store.get_run(x)` on the loop thread."""

    def __init__(self, target: AsyncReadModels, loop: LoopThread) -> None:
        self.target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.target, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(method(*args, **kwargs))

        return call


Store = SqliteReadModels | Blocking
OpenStore = Callable[..., Store]


def _sqlite_stores(tmp_path: Path) -> tuple[OpenStore, Callable[[], None]]:
    """Stores in tmp_path by file name."""
    opened: list[SqliteReadModels] = []

    def open_(name: str = "readmodels.db") -> SqliteReadModels:
        store = SqliteReadModels.open(tmp_path / name)
        opened.append(store)
        return store

    def close_all() -> None:
        for store in opened:
            store.close()

    return open_, close_all


def _async_stores(
    locate: Callable[[str], str], open_async: Callable[[str], Awaitable[AsyncReadModels]]
) -> tuple[OpenStore, Callable[[], None]]:
    """Async stores behind `Blocking`; `locate` maps a store name to what `open_async`
    takes, the same for the same name, so opening a name again reopens its store."""
    loop = LoopThread()
    opened: list[Blocking] = []

    async def open_coroutine(name: str) -> AsyncReadModels:
        return await open_async(locate(name))

    def open_(name: str = "readmodels.db") -> Blocking:
        store = Blocking(loop.run(open_coroutine(name)), loop)
        opened.append(store)
        return store

    def close_all() -> None:
        try:
            for store in opened:
                loop.run(store.target.close())
        finally:
            loop.close()

    return open_, close_all


def _postgres_stores(schemas: PostgresSchemas) -> tuple[OpenStore, Callable[[], None]]:
    """Stores in fresh schemas, one per name."""
    dsns: dict[str, str] = {}

    def locate(name: str) -> str:
        if name not in dsns:
            dsns[name] = schemas.create()
        return dsns[name]

    return _async_stores(locate, PostgresReadModels.open)


def _threaded_stores(tmp_path: Path) -> tuple[OpenStore, Callable[[], None]]:
    """SQLite files behind the async interface, as async hosts would use them."""
    return _async_stores(lambda name: str(tmp_path / name), ThreadedReadModels.open)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_store(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens stores of the test's engine by name and closes them all afterwards.

    Postgres is started only for the tests that run on it (`-k sqlite` needs none).
    """
    if engine == "sqlite":
        open_, close_all = _sqlite_stores(tmp_path)
    elif engine == "sqlite-threaded":
        open_, close_all = _threaded_stores(tmp_path)
    else:
        open_, close_all = _postgres_stores(request.getfixturevalue("postgres_schemas"))
    yield open_
    close_all()


@pytest.fixture
def store(open_store: OpenStore) -> Store:
    return open_store("readmodels.db")


@pytest.fixture
def open_sqlite_store(tmp_path: Path) -> Iterator[OpenStore]:
    """For the tests about the SQLite file itself."""
    open_, close_all = _sqlite_stores(tmp_path)
    yield open_
    close_all()
