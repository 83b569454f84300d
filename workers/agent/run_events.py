"""The events an agent node appends to its run itself (usage, a patch proposal, a
sub-run's work, a budget approval request), beside the outcome its worker writes."""

from __future__ import annotations

import time

from aob.events.ids import new_event_id
from aob.events.tracing import current_span_id, current_trace_id
from aob.events.types import Event, NodeScheduled, Payload


def agent_event(task: NodeScheduled, payload: Payload) -> Event:
    """`payload` as an event of `task`'s run, now, by the agent node, in its trace."""
    return Event(
        new_event_id(),
        task.run_id,
        time.time_ns() // 1_000_000,
        payload,
        current_trace_id(),
        actor=f"agent:{task.node_id}",
        span_id=current_span_id(),
    )
