"""Hosts the coordinator fold on an event log (the embedded default's host).

Consumes `aob.runs`, folds each event into its run's state and appends what the
fold emits: run events back to `aob.runs`, and each `NodeScheduled` also to its
`aob.tasks.<type>` topic as the worker's work item. Appends and the consumer
offsets are committed together, so after a crash the host resumes from its
committed offsets and the fold's deterministic ids make any replay harmless.

A record it cannot decode, or whose fold or emitted events fail (a bug, an event too
deep to encode), is set aside (`deadletter`): its run fails with the reason, its
state is dropped (the fold may have changed it halfway), and every other run goes on.
"""

from __future__ import annotations

import asyncio
import logging

from aob.events.codec import decode, encode
from aob.events.log.bounded import oversize
from aob.events.log.consumer import Consumer
from aob.events.log.port import Append, EventLog, Record
from aob.events.tracing import traced
from aob.events.types import (
    EXPRESSIONS_TOPIC,
    RUNS_TOPIC,
    Event,
    ExpressionRequested,
    NodeScheduled,
    task_topic,
)
from aob.projections.coordinator.fold import fold
from aob.projections.coordinator.state import RunState
from aob.projections.runtime.deadletter import dead_letter, describe

log = logging.getLogger(__name__)

GROUP = "aob-coordinator"


class CoordinatorHost:
    """In-memory run states rebuilt from the log at start, then kept by folding."""

    def __init__(
        self, event_log: EventLog, *, max_records: int = 500, max_event_bytes: int | None = None
    ) -> None:
        self.log = event_log
        # Emitted events over this fail their run here, rather than stall the batch
        # the log would refuse (None: the log's own bound is the only check).
        self.max_event_bytes = max_event_bytes
        self.consumer = Consumer(event_log, GROUP, [RUNS_TOPIC], max_records=max_records)
        self.states: dict[str, RunState] = {}
        self.finished: set[str] = set()
        # Positions in aob.runs of events this host appended and has not read back yet.
        self._own: set[tuple[int, int]] = set()

    async def recover(self) -> None:
        """Rebuild run states by folding the log up to the committed offsets.

        What the fold emits here was already appended before the crash (appends and
        offsets are committed together), so it is discarded.
        """
        await self.consumer.start()
        for tp, end in self.consumer.positions.items():
            offset = 0
            while offset < end:
                records = await self.log.read(tp.topic, tp.partition, offset, 1000)
                for record in records:
                    if record.offset >= end:
                        break
                    self._refold(record)
                offset = records[-1].offset + 1 if records else end

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            records = await self.consumer.poll(timeout=0.5)
            if records:
                written = await self.consumer.commit(self.handle(records))
                self._own.update((r.partition, r.offset) for r in written if r.topic == RUNS_TOPIC)

    def handle(self, records: list[Record]) -> list[Append]:
        """Fold a batch of records; the appends they lead to."""
        appends: list[Append] = []
        own = self._own
        for record in records:
            position = (record.partition, record.offset)
            if position in own:
                # The fold applied this event when it emitted it: reading it back would
                # only be recognised as a duplicate, after paying for its decoding.
                own.discard(position)
                continue
            appends.extend(self._handle(record))
        return appends

    def _handle(self, record: Record) -> list[Append]:
        """What folding one record leads to; poison is set aside, never raised."""
        try:
            event = decode(record.value)
        except Exception as error:
            log.error("set aside an undecodable record at %s: %s", _at(record), error)
            self._drop(record.key)
            return dead_letter(record, GROUP, describe(error))
        try:
            appends = self._appends(self._fold(event))
            problem = self._oversize(appends)
            if problem is None:
                return appends
            log.error("set aside %s %s: %s", event.type, event.event_id, problem)
            self._drop(event.key)
            return dead_letter(record, GROUP, problem, what=event.type)
        except Exception as error:
            # The run's trace only around the log line: set around every fold it
            # cost ~6% of handle() (time CoordinatorHost.handle over a batch).
            with traced(event.trace_id, event.key):
                log.exception("fold failed on %s %s", event.type, event.event_id)
            self._drop(event.key)
            return dead_letter(record, GROUP, describe(error), what=event.type)

    def _oversize(self, appends: list[Append]) -> str | None:
        return None if self.max_event_bytes is None else oversize(appends, self.max_event_bytes)

    @staticmethod
    def _appends(emitted: list[Event]) -> list[Append]:
        """`emitted` encoded (all or none: an encoding error raises before any is kept)."""
        appends: list[Append] = []
        for event in emitted:
            data = encode(event)
            appends.append(Append(RUNS_TOPIC, event.key, data))
            if isinstance(event.payload, NodeScheduled):
                appends.append(Append(task_topic(event.payload.node_type), event.key, data))
            elif isinstance(event.payload, ExpressionRequested):
                appends.append(Append(EXPRESSIONS_TOPIC, event.key, data))
        return appends

    def _refold(self, record: Record) -> None:
        """Fold a record read again at recovery; what it emitted was appended before.
        A poison record was set aside then, and its run failed: it only ends the run."""
        try:
            self._fold(decode(record.value))
        except Exception as error:
            log.warning("recovery: skipped poison at %s: %s", _at(record), describe(error))
            self._drop(record.key)

    def _drop(self, run_id: str) -> None:
        """Forget a run whose state a failure may have left half-changed; its
        `RunFailed` is on its way, and later events of a finished run change nothing."""
        if run_id:
            self.states.pop(run_id, None)
            self.finished.add(run_id)

    def _fold(self, event: Event) -> list[Event]:
        if event.key in self.finished:
            return []
        state, emitted = fold(self.states.get(event.key), event)
        if state is None:
            return emitted
        if state.is_finished:
            # Later events of a finished run change nothing: keep only its id.
            self.states.pop(event.key, None)
            self.finished.add(event.key)
        else:
            self.states[event.key] = state
        return emitted


def _at(record: Record) -> str:
    return f"{record.topic}/{record.partition}@{record.offset}"
