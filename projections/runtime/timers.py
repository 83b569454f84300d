"""Fires due timers: the clock enters the event-sourced world only here.

Pending timers are a read model (projected from `TimerSet`/`TimerFired`), so a
restarted service finds every timer that fell due while it was down and fires it
at once. Firing appends `TimerFired`; the fold ignores a timer it no longer holds,
so a timer fired twice (crash between append and projection) is harmless.

Timers are owned with their runs: a service fires only the timers of runs whose
`aob.runs` partition its coordinator owns (`owns`), so with several coordinators
each timer is fired by one of them, and moves with its partition. Its `TimerFired`
goes through the coordinator's fenced commit (`append`): a coordinator that lost the
partition meanwhile writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aob.events.codec import encode
from aob.events.ids import new_event_id
from aob.events.log.port import Append, EventLog, Record
from aob.events.tracing import traced
from aob.events.types import RUNS_TOPIC, Event, TimerFired


class TimerStore(Protocol):
    async def due_timers(self, now_ms: int, limit: int) -> list[dict[str, Any]]: ...

    async def get_run(self, run_id: str) -> dict[str, Any] | None: ...


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class TimerService:
    def __init__(
        self,
        event_log: EventLog,
        store: TimerStore,
        *,
        interval: float = 0.05,
        clock: Callable[[], int] = now_ms,
        owns: Callable[[str], bool] | None = None,
        append: Callable[[Sequence[Append]], Awaitable[list[Record]]] | None = None,
    ) -> None:
        self.log = event_log
        self.store = store
        self.interval = interval
        self.clock = clock
        # Whether this service fires a run's timers (None: every run's).
        self.owns = owns
        # How `TimerFired` is written (None: a plain append to the log).
        self.append = event_log.append if append is None else append
        # Fired but maybe not projected yet: don't fire them again on the next tick.
        self._in_flight: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.fire_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def fire_due(self) -> int:
        """Append `TimerFired` for every due timer; returns how many fired."""
        now = self.clock()
        due = await self.store.due_timers(now, 1000)
        if self.owns is not None:
            due = [t for t in due if self.owns(t["run_id"])]
        pending = {t["timer_id"] for t in due}
        self._in_flight &= pending
        appends = []
        traces: dict[str, str] = {}
        for timer in due:
            if timer["timer_id"] in self._in_flight:
                continue
            self._in_flight.add(timer["timer_id"])
            run_id = timer["run_id"]
            if run_id not in traces:
                traces[run_id] = await self._trace_of(run_id)
            # TimerFired carries its run's trace, so what the fold emits from it (a
            # retry's NodeScheduled) stays in the run's trace too.
            with traced(traces[run_id], run_id):
                event = Event(
                    event_id=new_event_id(),
                    key=run_id,
                    occurred_at=now,
                    payload=TimerFired(run_id, timer["timer_id"]),
                    trace_id=traces[run_id],
                    actor="timer-service",
                )
                appends.append(Append(RUNS_TOPIC, event.key, encode(event)))
        if appends:
            await self.append(appends)
        return len(appends)

    async def _trace_of(self, run_id: str) -> str:
        run = await self.store.get_run(run_id)
        return str(run.get("trace_id") or "") if run else ""
