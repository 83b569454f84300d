"""Replay: a new run forked from the state of another at a point of its history.

The fork is what the coordinator's fold had built of the run by then: the run's events
up to that point are folded again (`aob.projections.coordinator.fold.replay`), so the
fork takes the definition as the fold materialized it (its base plus the patches
applied so far), its inputs, and the outputs of the nodes whose latest instance had
completed. `RunSubmitted.checkpoint` carries them, and the coordinator starts those
nodes out completed, so only the rest of the workflow runs again. Nodes inside loops
are never seeded (a loop reruns whole); failed, skipped and unfinished nodes run again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aob.events.types import PAYLOAD_BY_NAME, RUNS_TOPIC, Event, RunSubmitted
from aob.platform.problems import Problem
from aob.projections.coordinator.fold import replay
from aob.projections.coordinator.state import NodeStatus

HISTORY_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Logged:
    """A run event and its position (offset) in the run's partition."""

    offset: int
    event: Event


@dataclass(frozen=True, slots=True)
class Fork:
    definition: dict[str, Any]
    inputs: Any
    workflow_id: str | None
    version: int | None
    tag: str | None
    from_event: int | None
    outputs: dict[str, Any] = field(default_factory=dict)

    def checkpoint(self, run_id: str) -> dict[str, Any] | None:
        if self.from_event is None:
            return None
        return {"run_id": run_id, "from_event": self.from_event, "outputs": self.outputs}


class Timeline(Protocol):
    async def timeline(
        self, key: str, after_offset: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]: ...


async def run_events(read: Timeline, run_id: str) -> list[Logged]:
    """The run's events on aob.runs, in log order, from its timeline read model (set
    aside records, which carry no event, left out)."""
    events: list[Logged] = []
    after: int | None = None
    while True:
        page = await read.timeline(run_id, after_offset=after, limit=HISTORY_PAGE)
        events += [logged(row) for row in page if row["topic"] == RUNS_TOPIC and _event(row)]
        if len(page) < HISTORY_PAGE:
            return events
        after = page[-1]["offset"]


def _event(row: dict[str, Any]) -> bool:
    return row.get("event_id") is not None and row["type"] in PAYLOAD_BY_NAME


def logged(row: dict[str, Any]) -> Logged:
    """A timeline row as the event it shows."""
    payload = PAYLOAD_BY_NAME[row["type"]](**row["data"])
    event = Event(
        row["event_id"],
        row["key"],
        row["occurred_at"],
        payload,
        row.get("trace_id") or "",
        row.get("causation_id"),
        row.get("actor") or "system",
    )
    return Logged(row["offset"], event)


def fork(run_id: str, history: Sequence[Logged], from_event: int | None) -> Fork:
    """The fork of a run after its event at offset `from_event` (None: from its very
    start). `history` is the run's events, in log order."""
    submitted = history[0].event.payload if history else None
    if not isinstance(submitted, RunSubmitted):
        raise Problem(
            409,
            "no-history",
            "Run history unavailable",
            f"the history of run {run_id!r} does not start with its submission",
        )
    start = Fork(
        submitted.definition,
        submitted.inputs,
        submitted.workflow_id,
        submitted.version,
        submitted.tag,
        None,
    )
    if from_event is None:
        return start
    first, last = history[0].offset, history[-1].offset
    if not first <= from_event <= last:
        raise Problem(
            422,
            "bad-event",
            "No such event",
            f"run {run_id!r} has events {first} to {last}, not {from_event}",
            first_event=first,
            last_event=last,
        )
    state = replay([e.event for e in history if e.offset <= from_event])
    assert state is not None  # the history starts with the run's submission
    in_loops = frozenset().union(*state.ir.loop_bodies)
    outputs = {
        node_id: state.outputs[node_id]
        for node_id, node in state.nodes.items()
        if node.status is NodeStatus.COMPLETED and node_id not in in_loops
    }
    return Fork(
        state.definition,
        start.inputs,
        start.workflow_id,
        start.version,
        start.tag,
        from_event,
        outputs,
    )
