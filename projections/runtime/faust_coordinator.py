"""Hosts the coordinator fold in a faust-streaming app (cluster mode).

    python -m aob.projections.runtime.faust_coordinator worker --bootstrap HOST:PORT

One faust agent consumes `aob.runs` (Avro bytes, keyed by run id) and folds each
event into its run's state, kept in a faust table whose changelog topic makes it
survive the process: run any number of these processes and Kafka's consumer group
shares the partitions among them; when one dies its partitions move to the others,
which restore the runs' states from the changelog and go on.

Correctness rests on at-least-once delivery and the idempotent fold, not on faust's
exactly-once mode (open bugs: duplicates after kill/restart, crashes on rebalance).
Per batch of events (`noack_take`):

1. fold every event into its run's state (events the fold has seen change nothing);
2. produce what the fold emitted - run events to `aob.runs`, and each
   `NodeScheduled` also to `aob.tasks.<type>` (same key) - and await delivery;
3. write the changed runs' states to the table and await the changelog's delivery;
4. only then acknowledge the events, so that faust may commit their offsets.

A crash before 2 completes replays the batch from an older state: the fold derives
the same decisions with the same ids, and every consumer drops the duplicates (the
worker host remembers the task ids it ran). A crash between 2 and 4 replays it on a
state that has seen it: nothing happens. Three faust behaviours are worked around:
`take`/`take_events` acknowledge a batch even when its handler raises (so a failed
step exits the process at once instead, exit code 70); faust's commit flushes the
producer first, but its buffer flush gives up after 0.1 s with messages still
queued (so step 3 awaits the changelog itself); and the worker's terminal spinner
sets the root logger to DEBUG (so it is switched off).

The table maps a run id to a snapshot (JSON bytes, `snapshot`/`restore`; the
compiled workflow is compiled again from the run's definition); a finished run
keeps only a small marker, so late events for it are ignored and the compacted
changelog forgets its state. Decoded states are cached per process and used while
the table still holds the very bytes this process wrote for them.

The table lives in memory (`memory://`): a process restores the partitions it is
given from the changelog. A process killed outright loses its partitions to the
others once the broker has missed its heartbeats for `--session-timeout` seconds.
faust appears only in this module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import faust
from faust.worker import Worker

from aob.events.codec import decode, encode
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Record
from aob.events.types import (
    EXPRESSIONS_TOPIC,
    RUNS_TOPIC,
    ExpressionRequested,
    NodeScheduled,
    task_topic,
)
from aob.projections.coordinator.fold import fold
from aob.projections.coordinator.state import (
    NodeState,
    NodeStatus,
    PendingExpression,
    RunState,
    RunStatus,
    Timer,
)
from aob.projections.runtime.deadletter import UNDECODABLE, dead_letter, describe
from aob.projections.workflow.compiler import compile_workflow

__all__ = [
    "APP_ID",
    "FaustCoordinator",
    "Options",
    "create_app",
    "main",
    "restore",
    "snapshot",
]

log = logging.getLogger(__name__)

APP_ID: Final = "aob-faust-coordinator"  # the consumer group; prefixes faust's topics
TABLE: Final = "runs"  # changelog topic: f"{APP_ID}-{TABLE}-changelog"
_SNAPSHOT_VERSION: Final = 2  # 2 added tenant, output refs and awaited expressions
_BATCH: Final = 500  # events folded per step at most
_BATCH_WAIT: Final = 0.02  # seconds a step waits for more events (batching vs latency)
_EXIT_STEP_FAILED: Final = 70  # EX_SOFTWARE
_SESSION_TIMEOUT: Final = 10.0
_HEARTBEAT_INTERVAL: Final = 1.0
_COMMIT_INTERVAL: Final = 1.0


# --- snapshots: a run's state as table bytes ------------------------------------------

Stored = RunState | RunStatus  # a live run's state, or how a finished run ended


def snapshot(value: Stored) -> bytes:
    """`value` as the table stores it (JSON); the compiled workflow is left out."""
    if isinstance(value, RunStatus):
        return json.dumps({"v": _SNAPSHOT_VERSION, "finished": value.value}).encode()
    state = value
    document = {
        "v": _SNAPSHOT_VERSION,
        "run_id": state.run_id,
        "status": state.status.value,
        "base": state.base,
        "definition": state.definition,
        "inputs": state.inputs,
        "known_types": sorted(state.known_types),
        "nodes": {
            node_id: [n.iteration, n.attempt, n.status.value, n.passthrough]
            for node_id, n in state.nodes.items()
        },
        "edge_taken": [[s, t, taken] for (s, t), taken in state.edge_taken.items()],
        "outputs": state.outputs,
        "loop_counts": [[s, t, count] for (s, t), count in state.loop_counts.items()],
        "timers": {
            timer_id: [t.purpose, t.node_id, t.iteration, t.attempt]
            for timer_id, t in state.timers.items()
        },
        "seen": sorted(state.seen),
        "ever_started": sorted(state.ever_started),
        "pending_approvals": state.pending_approvals,
        "patches": sorted(state.patches),
        "pending_patches": state.pending_patches,
        "revision": state.revision,
        "agents_added": state.agents_added,
        "outstanding": state.outstanding,
        "tenant": state.tenant,
        "output_refs": state.output_refs,
        "awaiting": {
            request_id: [p.purpose, p.source, p.target, p.iteration]
            for request_id, p in state.awaiting.items()
        },
        "verdicts": state.verdicts,
        "output_requests": state.output_requests,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def restore(data: bytes) -> Stored:
    """The value `snapshot` made `data` from; the workflow is compiled again from the
    run's (materialized) definition, as the fold compiled it."""
    document = json.loads(data)
    if document.get("v") not in (1, _SNAPSHOT_VERSION):
        raise ValueError(f"run snapshot version {document.get('v')!r} is not {_SNAPSHOT_VERSION}")
    if "finished" in document:
        return RunStatus(document["finished"])
    return RunState(
        run_id=document["run_id"],
        status=RunStatus(document["status"]),
        base=document["base"],
        definition=document["definition"],
        ir=compile_workflow(document["definition"]),
        inputs=document["inputs"],
        known_types=frozenset(document["known_types"]),
        nodes={
            node_id: NodeState(iteration, attempt, NodeStatus(status), passthrough)
            for node_id, (iteration, attempt, status, passthrough) in document["nodes"].items()
        },
        edge_taken={(s, t): taken for s, t, taken in document["edge_taken"]},
        outputs=document["outputs"],
        loop_counts={(s, t): count for s, t, count in document["loop_counts"]},
        timers={timer_id: Timer(*fields) for timer_id, fields in document["timers"].items()},
        seen=set(document["seen"]),
        ever_started=set(document["ever_started"]),
        pending_approvals=document["pending_approvals"],
        patches=set(document["patches"]),
        pending_patches=document["pending_patches"],
        revision=document["revision"],
        agents_added=document["agents_added"],
        outstanding=document["outstanding"],
        # Absent from version 1 snapshots, which predate them.
        tenant=document.get("tenant"),
        output_refs=document.get("output_refs", {}),
        awaiting={r: PendingExpression(*f) for r, f in document.get("awaiting", {}).items()},
        verdicts=document.get("verdicts", {}),
        output_requests=document.get("output_requests", 0),
    )


# --- the app ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """How a coordinator process talks to Kafka.

    The group timeouts decide how fast a dead process's partitions move: the broker
    waits `session_timeout` without heartbeats (it accepts 6 s at the least, by
    default) before handing them to the others.
    """

    bootstrap: str
    partitions: int  # of aob.runs; the table's changelog gets as many
    replication: int = 1  # of the changelog topic
    session_timeout: float = _SESSION_TIMEOUT
    heartbeat_interval: float = _HEARTBEAT_INTERVAL
    rebalance_timeout: float = 20.0
    commit_interval: float = _COMMIT_INTERVAL
    standby_replicas: int = 0


class FaustCoordinator:
    """The agent's body: folds batches of `aob.runs` events into the table's states."""

    def __init__(self, app: faust.App, table: Any) -> None:
        self.app = app
        self.table = table
        # run key -> (the table bytes it was decoded from, the state): valid while the
        # table still holds those very bytes (a restore from the changelog replaces them).
        self._live: dict[bytes, tuple[bytes, Stored]] = {}
        # Positions of events this process appended to aob.runs: the fold applied each
        # when it emitted it, so reading it back would only find a duplicate.
        self._own: set[tuple[int, int]] = set()

    async def handle(self, events: Sequence[Any]) -> None:
        """Fold faust `events` of `aob.runs`; returns once every effect is durable.

        Poison (an undecodable record, a fold or an encoding that fails, a state that
        cannot be stored) is set aside on `aob.deadletter` and its run fails: a step
        never fails, and so never exits the process, for one run's sake.
        """
        states: dict[bytes, Stored] = {}
        partitions: dict[bytes, int] = {}
        last: dict[bytes, Any] = {}  # per run, its last message of the batch
        outbox: list[tuple[str, bytes, bytes]] = []
        for event in events:
            message = event.message
            position = (message.partition, message.offset)
            if position in self._own:
                self._own.discard(position)
                continue
            key: bytes | None = message.key
            if key is None:
                outbox.extend(_set_aside(message, "a record of aob.runs without a key (run id)"))
                continue
            try:
                current = states[key] if key in states else self._load(key)
                emitted, after = self._fold(current, message.value)
            except Exception as error:
                log.exception("set aside the record at %s", _at(message))
                emitted, after = _set_aside(message, describe(error)), RunStatus.FAILED
                current = None
            outbox.extend(emitted)
            if after is None or (after is current and isinstance(after, RunStatus)):
                continue  # an unknown run, or one that had ended: nothing to store
            states[key] = after
            partitions[key] = message.partition
            last[key] = message
        snapshots = self._snapshots(states, last, outbox)
        await self._produce(outbox)
        await self._store(states, snapshots, partitions)

    def _snapshots(
        self,
        states: dict[bytes, Stored],
        last: Mapping[bytes, Any],
        outbox: list[tuple[str, bytes, bytes]],
    ) -> dict[bytes, bytes]:
        """The table bytes of each changed run; a state that cannot be stored (e.g. too
        deep to serialise) fails its run, set aside with its last event of the batch."""
        snapshots: dict[bytes, bytes] = {}
        for key, value in states.items():
            try:
                snapshots[key] = snapshot(value)
            except Exception as error:
                log.exception("cannot store the state of run %r", key)
                reason = f"its state cannot be stored: {describe(error)}"
                outbox.extend(_set_aside(last[key], reason))
                states[key] = RunStatus.FAILED
                snapshots[key] = snapshot(RunStatus.FAILED)
        return snapshots

    def _load(self, key: bytes) -> Stored | None:
        data = self.table.get(key)
        if data is None:
            return None
        cached = self._live.get(key)
        if cached is not None and cached[0] is data:
            return cached[1]
        value = restore(data)
        self._live[key] = (data, value)
        return value

    def _fold(
        self, current: Stored | None, value: bytes
    ) -> tuple[list[tuple[str, bytes, bytes]], Stored | None]:
        """The records to produce and the run's state after the event in `value`."""
        if isinstance(current, RunStatus):
            return [], current  # the run has ended: later events change nothing
        state, emitted = fold(current, decode(value))  # raises for poison: set aside
        outbox: list[tuple[str, bytes, bytes]] = []
        for out in emitted:
            data = encode(out)
            key = out.key.encode()
            outbox.append((RUNS_TOPIC, key, data))
            if isinstance(out.payload, NodeScheduled):
                outbox.append((task_topic(out.payload.node_type), key, data))
            elif isinstance(out.payload, ExpressionRequested):
                outbox.append((EXPRESSIONS_TOPIC, key, data))
        if state is not None and state.is_finished:
            return outbox, state.status
        return outbox, state

    async def _produce(self, outbox: Sequence[tuple[str, bytes, bytes]]) -> None:
        if not outbox:
            return
        producer = self.app.producer
        pending: list[Awaitable[Any]] = [
            await producer.send(topic, key, value, None, None, None) for topic, key, value in outbox
        ]
        delivered = await asyncio.gather(*pending)
        for (topic, _, _), meta in zip(outbox, delivered, strict=True):
            if topic == RUNS_TOPIC:
                self._own.add((meta.partition, meta.offset))

    async def _store(
        self,
        states: Mapping[bytes, Stored],
        snapshots: Mapping[bytes, bytes],
        partitions: Mapping[bytes, int],
    ) -> None:
        """Write the runs' states to the table, and wait for the changelog to have them."""
        pending = []
        for key, value in states.items():
            data = snapshots[key]
            # The changelog partition is the event's: faust restores a table partition
            # together with the same partition of aob.runs.
            pending.append(self.table.send_changelog(partitions[key], key, data))
            self.table.data[key] = data
            if isinstance(value, RunStatus):
                self._live.pop(key, None)  # a finished run is never folded again
            else:
                self._live[key] = (data, value)
        await asyncio.gather(*pending)


def _set_aside(message: Any, reason: str) -> list[tuple[str, bytes, bytes]]:
    """A faust message of aob.runs set aside: its dead letter and its run's failure."""
    key = message.key.decode("utf-8", "replace") if message.key is not None else ""
    record = Record(message.topic, message.partition, message.offset, key, message.value, 0)
    try:
        what = decode(message.value).type
    except Exception:
        what = UNDECODABLE
    appends = dead_letter(record, APP_ID, reason, what=what)
    return [(a.topic, a.key.encode(), a.value) for a in appends]


def _at(message: Any) -> str:
    return f"{message.topic}/{message.partition}@{message.offset}"


def create_app(options: Options) -> tuple[faust.App, FaustCoordinator]:
    """A faust app whose agent hosts the coordinator fold (not started)."""
    app = faust.App(
        APP_ID,
        broker=[f"kafka://{address}" for address in options.bootstrap.split(",")],
        store="memory://",
        processing_guarantee="at_least_once",
        autodiscover=False,
        web_enabled=False,
        topic_partitions=options.partitions,
        topic_replication_factor=options.replication,
        table_standby_replicas=options.standby_replicas,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_session_timeout=options.session_timeout,
        broker_heartbeat_interval=options.heartbeat_interval,
        broker_rebalance_timeout=options.rebalance_timeout,
        broker_commit_interval=options.commit_interval,
    )
    # aob.runs is made by the platform (its partition count fixes which run goes
    # where): faust must not create or reconfigure it.
    runs = app.topic(
        RUNS_TOPIC,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",  # else the app's default (json) decodes them
        value_serializer="raw",
        partitions=options.partitions,
        internal=False,
    )
    table = app.Table(TABLE, key_type=bytes, value_type=bytes, partitions=options.partitions)
    coordinator = FaustCoordinator(app, table)

    async def coordinate(stream: Any) -> None:
        # `noack_take`: faust's `take`/`take_events` ack a batch even when its handler
        # raises, and acked offsets get committed: that would lose the batch's effects.
        async for events in stream.noack_take(_BATCH, within=_BATCH_WAIT):
            try:
                await coordinator.handle(events)
            except Exception:
                # Which effects of the batch are durable is unknown, and the in-memory
                # states are ahead of the table: leave at once, commit nothing more, and
                # let a restart (or another process) replay from the committed offsets.
                log.critical("coordinator step failed; exiting", exc_info=True)
                logging.shutdown()
                os._exit(_EXIT_STEP_FAILED)
            for event in events:
                await stream.ack(event)

    app.agent(runs, name="coordinate")(coordinate)
    return app, coordinator


# --- running a coordinator process -------------------------------------------------------


async def _runs_partitions(bootstrap: str, partitions: int) -> int:
    """Create aob.runs with `partitions` if it does not exist; its partition count."""
    event_log = await KafkaEventLog.open(bootstrap)
    try:
        await event_log.create_topic(RUNS_TOPIC, partitions)
        return await event_log.partitions(RUNS_TOPIC)
    finally:
        await event_log.close()


def _write_ready_file(app: faust.App, path: Path) -> None:
    """After every rebalance, write the aob.runs partitions this process now owns
    (JSON): a readiness probe, and how tests see who holds what."""

    async def on_rebalance_complete(sender: Any, **_: Any) -> None:
        owned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == RUNS_TOPIC)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"pid": os.getpid(), "partitions": owned}))
        temporary.replace(path)

    app.on_rebalance_complete.connect(on_rebalance_complete)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aob.projections.runtime.faust_coordinator",
        description="Run a coordinator process (a faust worker) against a Kafka cluster.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="fold aob.runs until stopped (SIGTERM/SIGINT)")
    worker.add_argument(
        "--bootstrap",
        default=os.environ.get("AOB_KAFKA_BOOTSTRAP"),
        help="host:port[,host:port...] (default: $AOB_KAFKA_BOOTSTRAP)",
    )
    worker.add_argument(
        "--partitions", type=int, default=8, help="of aob.runs, if it must be created (8)"
    )
    worker.add_argument("--replication", type=int, default=1, help="of the changelog topic (1)")
    worker.add_argument("--session-timeout", type=float, default=_SESSION_TIMEOUT)
    worker.add_argument("--heartbeat-interval", type=float, default=_HEARTBEAT_INTERVAL)
    worker.add_argument("--commit-interval", type=float, default=_COMMIT_INTERVAL)
    worker.add_argument("--ready-file", type=Path, help="write owned partitions here (JSON)")
    worker.add_argument("--loglevel", default="warning")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.bootstrap:
        print("faust_coordinator: no --bootstrap and no $AOB_KAFKA_BOOTSTRAP", file=sys.stderr)
        return 2
    if args.partitions < 1:
        print("faust_coordinator: --partitions must be at least 1", file=sys.stderr)
        return 2
    partitions = asyncio.run(_runs_partitions(args.bootstrap, args.partitions))
    options = Options(
        bootstrap=args.bootstrap,
        partitions=partitions,
        replication=args.replication,
        session_timeout=args.session_timeout,
        heartbeat_interval=args.heartbeat_interval,
        commit_interval=args.commit_interval,
    )
    asyncio.set_event_loop(asyncio.new_event_loop())  # faust's worker runs the current loop
    app, _ = create_app(options)
    if args.ready_file is not None:
        _write_ready_file(app, args.ready_file)
    worker = Worker(app, loglevel=args.loglevel, quiet=True)
    # faust's terminal spinner (on unless the level is below WARN) sets the root logger
    # to DEBUG so that every record turns it: every library's debug records then get
    # built, costing more CPU than the fold itself.
    worker.spinner = None
    worker.execute_from_commandline()
    return 0  # not reached: the worker exits the process


if __name__ == "__main__":
    raise SystemExit(main())
