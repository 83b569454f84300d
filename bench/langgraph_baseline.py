"""The baseline: the same 5-node fan-out/join DAG on LangGraph's durable SQLite checkpointer.

Optional (`pip install -e '.[bench]'`): `load()` returns None when LangGraph is not
installed, and the core benchmark then reports aob alone.

Made comparable with aob's embedded default: trivial nodes computing the same
values as aob's transforms, one thread per run, `durability="sync"` (every
superstep's checkpoint is written before the next step starts, as every aob event
is durable before anything acts on it), and the same SQLite journal (WAL) and
`synchronous` level as aob's log.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict


class DagState(TypedDict, total=False):
    x: int
    a: int
    b: int
    c: int
    d: int
    e: int


def expected_e(x: int) -> int:
    """What node `e` computes from the run input `x` (both engines must agree)."""
    return (x + 1) * 2 + (x + 1) * 3 + (x + 1) * 4


def version() -> str | None:
    """The installed LangGraph's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("langgraph")
    except importlib.metadata.PackageNotFoundError:
        return None


def preload() -> None:
    """Import LangGraph now (if installed), so that the garbage collector's tuning
    freezes its modules as it freezes aob's: imported mid-benchmark, they would stay in
    the collector's generations and slow every engine's full passes after them."""
    if version() is not None:
        importlib.import_module("langgraph.graph")
        importlib.import_module("langgraph.checkpoint.sqlite.aio")


def _build_graph(state_graph: Any, start: Any, end: Any) -> Any:
    graph = state_graph(DagState)
    graph.add_node("a", lambda s: {"a": s["x"] + 1})
    graph.add_node("b", lambda s: {"b": s["a"] * 2})
    graph.add_node("c", lambda s: {"c": s["a"] * 3})
    graph.add_node("d", lambda s: {"d": s["a"] * 4})
    graph.add_node("e", lambda s: {"e": s["b"] + s["c"] + s["d"]})
    graph.add_edge(start, "a")
    for branch in ("b", "c", "d"):
        graph.add_edge("a", branch)
    graph.add_edge(["b", "c", "d"], "e")  # the join waits for all three
    graph.add_edge("e", end)
    return graph


class LangGraphRunner:
    """Runs the DAG once per call on one compiled graph and checkpointer."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._threads = 0

    async def run_one(self, x: int) -> float:
        """Seconds from invoking a new thread to its durable final state."""
        self._threads += 1
        config = {"configurable": {"thread_id": f"bench-{self._threads}"}}
        started = time.perf_counter()
        result = await self._app.ainvoke({"x": x}, config, durability="sync")
        elapsed = time.perf_counter() - started
        if result.get("e") != expected_e(x):
            raise RuntimeError(f"LangGraph run computed {result!r}")
        return elapsed


@asynccontextmanager
async def open_runner(data_dir: Path, *, synchronous: str) -> AsyncIterator[LangGraphRunner]:
    """A runner on a fresh checkpoint database in `data_dir`."""
    graph_module = importlib.import_module("langgraph.graph")
    saver_module = importlib.import_module("langgraph.checkpoint.sqlite.aio")
    saver_cls = saver_module.AsyncSqliteSaver
    async with saver_cls.from_conn_string(str(data_dir / "checkpoints.db")) as saver:
        await saver.setup()  # sets WAL; then match aob's durability level
        await saver.conn.execute(f"PRAGMA synchronous={synchronous}")
        graph = _build_graph(graph_module.StateGraph, graph_module.START, graph_module.END)
        yield LangGraphRunner(graph.compile(checkpointer=saver))
