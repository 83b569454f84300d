"""The second baseline: the same 5-node fan-out/join DAG as a DBOS workflow of durable steps.

Optional (`pip install -e '.[bench]'`): `version()` is None when DBOS is not installed,
and the core benchmark then leaves it out.

Made comparable with aob's embedded default: DBOS's own SQLite system database (a
file in the repetition's data dir), one workflow per run, each node a `@DBOS.step()`
whose result DBOS records before the workflow goes on (b, c and d run concurrently
with `asyncio.gather`, e after all three), and the same SQLite journal (WAL) and
`synchronous` level as aob's log, set on every connection DBOS opens.

DBOS is a process-wide singleton: a runner launches it on a fresh database and
destroys it on exit, keeping the registered workflow for the next repetition.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from bench.langgraph_baseline import expected_e

_Node = Callable[..., Awaitable[int]]
_DAG: dict[str, Callable[[int], Awaitable[int]]] = {}  # the registered workflow, once
_PRAGMAS: dict[str, str] = {}  # what every new SQLite connection gets (see _on_connect)


def version() -> str | None:
    """The installed DBOS's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("dbos")
    except importlib.metadata.PackageNotFoundError:
        return None


def preload() -> None:
    """Import DBOS now (if installed): see `langgraph_baseline.preload`."""
    if version() is not None:
        importlib.import_module("sqlalchemy")
        importlib.import_module("dbos")


def _workflow(dbos: Any) -> Callable[[int], Awaitable[int]]:
    """The DAG as a DBOS workflow; decorated once per process (DBOS's registry)."""
    if "dag" in _DAG:
        return _DAG["dag"]

    async def a(x: int) -> int:
        return x + 1

    async def b(a: int) -> int:
        return a * 2

    async def c(a: int) -> int:
        return a * 3

    async def d(a: int) -> int:
        return a * 4

    async def e(b: int, c: int, d: int) -> int:
        return b + c + d

    node_a, node_b, node_c, node_d, node_e = (
        _durable(dbos.step(name=f"aob_bench_{node.__name__}"), node) for node in (a, b, c, d, e)
    )

    async def fanout_join(x: int) -> int:
        out_a = await node_a(x)
        fanned = await asyncio.gather(node_b(out_a), node_c(out_a), node_d(out_a))
        return await node_e(*fanned)  # the join waits for all three

    dag = _durable(dbos.workflow(name="aob_bench_fanout_join"), fanout_join)
    _DAG["dag"] = dag
    return dag


def _durable(decorator: Any, function: _Node) -> _Node:
    """`function` under a DBOS decorator (untyped: DBOS is an optional import)."""
    return cast(_Node, decorator(function))


def _match_journal(synchronous: str) -> None:
    """WAL and `synchronous` on every SQLite connection opened from now on (DBOS
    opens its own through SQLAlchemy, with SQLite's defaults otherwise)."""
    sqlalchemy = importlib.import_module("sqlalchemy")
    _PRAGMAS["synchronous"] = synchronous
    if not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "connect", _on_connect):
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _on_connect)


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    if not _PRAGMAS or type(dbapi_conn).__module__.split(".")[0] != "sqlite3":
        return
    dbapi_conn.execute("PRAGMA journal_mode=WAL").fetchall()
    dbapi_conn.execute(f"PRAGMA synchronous={_PRAGMAS['synchronous']}")


class DbosRunner:
    """Runs the DAG once per call as a new DBOS workflow."""

    def __init__(self, dag: Callable[[int], Awaitable[int]]) -> None:
        self._dag = dag

    async def run_one(self, x: int) -> float:
        """Seconds from starting the workflow to its durably recorded result."""
        started = time.perf_counter()
        result = await self._dag(x)
        elapsed = time.perf_counter() - started
        if result != expected_e(x):
            raise RuntimeError(f"DBOS workflow computed {result!r}")
        return elapsed


@asynccontextmanager
async def open_runner(data_dir: Path, *, synchronous: str) -> AsyncIterator[DbosRunner]:
    """DBOS launched on a fresh system database in `data_dir`; destroyed on exit."""
    dbos = importlib.import_module("dbos").DBOS
    _match_journal(synchronous)
    dag = _workflow(dbos)
    config = {
        "name": "aob-bench",
        "system_database_url": f"sqlite:///{data_dir / 'dbos.sqlite'}",
        "run_admin_server": False,
        "log_level": "WARNING",
    }
    dbos(config=config)
    try:
        # Called in place: DBOS installs its own default executor on the running
        # loop at launch and shuts it down in destroy ...
        dbos.launch()
        yield DbosRunner(dag)
    finally:
        dbos.destroy()
        # ... so the loop gets a working one back for whatever runs next on it.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor())
