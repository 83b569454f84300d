"""A worker process for cluster tests: executes `sink` nodes, recording each execution.

    python -m tests.cluster.sink_worker --bootstrap HOST:PORT --sink executions.db

Each execution sleeps briefly (so a run is still going when a coordinator is killed)
and inserts one row into a SQLite file: the side effect the tests count, outside any
coordinator's memory. Runs `WorkerHost` on the Kafka log until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

from aob.events.log.kafka import KafkaEventLog
from aob.events.types import NodeScheduled
from aob.workers.host import NodeType, WorkerHost

NODE_TYPE = "sink"
SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    run_id TEXT NOT NULL, node_id TEXT NOT NULL, iteration INTEGER NOT NULL,
    attempt INTEGER NOT NULL, pid INTEGER NOT NULL
)
"""


def executions(sink: Path) -> list[tuple[str, str, int, int]]:
    """Every recorded execution: (run, node, iteration, attempt), duplicates included."""
    with sqlite3.connect(sink) as db:
        db.execute(SCHEMA)
        rows = db.execute("SELECT run_id, node_id, iteration, attempt FROM executions")
        return [tuple(row) for row in rows]


def sink_type(sink: Path, delay: float) -> NodeType:
    db = sqlite3.connect(sink, isolation_level=None)  # autocommit: a row per execution
    db.execute(SCHEMA)

    async def execute(task: NodeScheduled) -> Any:
        await asyncio.sleep(delay)
        db.execute(
            "INSERT INTO executions VALUES (?, ?, ?, ?, ?)",
            (task.run_id, task.node_id, task.iteration, task.attempt, os.getpid()),
        )
        return {"node": task.node_id}

    return NodeType(NODE_TYPE, execute, announce_start=False, concurrency=32)


async def serve(bootstrap: str, sink: Path, delay: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with await KafkaEventLog.open(bootstrap) as event_log:
        host = WorkerHost(event_log, sink_type(sink, delay), worker_id=f"sink-{os.getpid()}")
        await host.start()
        await host.run(stop)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--sink", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    asyncio.run(serve(args.bootstrap, args.sink, args.delay))


if __name__ == "__main__":
    main()
