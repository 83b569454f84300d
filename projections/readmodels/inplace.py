"""The embedded default's read models with the engine's hot path called in place.

`ThreadedReadModels` hands every call to a worker thread. For the calls every run
makes (the projector's batches, its positions, the tag and workflow a submit resolves,
a run's row, the due timers) that handoff cost more than the query: a thread wake-up
and a fight for the GIL per call, ~40% of the CPU of a run executed alone (profile in
bench/core.py's docstring). These are short indexed statements on a local file and
the work holds the GIL either way, so they run on the event loop's thread, as the
embedded log's do. Listings, timelines and dumps, which grow with the data, stay on
worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aob.events.log.port import TopicPartition
from aob.events.types import Event
from aob.projections.readmodels.port import ThreadedReadModels
from aob.projections.readmodels.views import Positioned


class InPlaceReadModels(ThreadedReadModels):
    """`ThreadedReadModels` whose per-run calls run on the caller's thread."""

    async def apply(self, batch: Sequence[tuple[Positioned, Event]]) -> None:
        self.store.apply(batch)

    async def advance(self, positions: Mapping[TopicPartition, int]) -> None:
        self.store.advance(positions)

    async def offsets(self) -> dict[TopicPartition, int]:
        return self.store.offsets()

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self.store.get_run(run_id)

    async def run_summary(self, run_id: str) -> dict[str, Any] | None:
        return self.store.run_summary(run_id)

    async def get_workflow(
        self, workflow_id: str, version: int | None = None
    ) -> dict[str, Any] | None:
        return self.store.get_workflow(workflow_id, version)

    async def get_tag(self, tag: str) -> dict[str, Any] | None:
        return self.store.get_tag(tag)

    async def due_timers(self, now_ms: int, limit: int = 100) -> list[dict[str, Any]]:
        return self.store.due_timers(now_ms, limit)
