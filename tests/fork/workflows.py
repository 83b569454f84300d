"""Workflows the fork tests share."""

from __future__ import annotations

from typing import Any

# a reads the inputs, b does not; c reads b, d reads a; j joins c and d.
FORKABLE: dict[str, Any] = {
    "name": "forkable",
    "output": ".nodes.j",
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expr": "{x: .inputs.x}"}},
        {"id": "b", "type": "transform", "config": {"expr": "{k: 1}"}},
        {"id": "c", "type": "transform", "config": {"expr": ".nodes.b.k + 1"}},
        {"id": "d", "type": "transform", "config": {"expr": ".nodes.a.x * 2"}},
        {"id": "j", "type": "transform", "config": {"expr": "[.nodes.c, .nodes.d]"}},
    ],
    "edges": [
        {"from": "b", "to": "c"},
        {"from": "a", "to": "d"},
        {"from": "c", "to": "j"},
        {"from": "d", "to": "j"},
    ],
}
BEFORE_JOIN = ("a", "b", "c", "d")


def last_completion(events: list[dict[str, Any]], nodes: tuple[str, ...]) -> int:
    """The offset of the last NodeCompleted of `nodes`: a point where all of them had
    completed and nothing after them had (j waits for c and d)."""
    offsets: list[int] = [
        e["offset"]
        for e in events
        if e["type"] == "NodeCompleted" and e["data"]["node_id"] in nodes
    ]
    assert len(offsets) == len(nodes), events
    return max(offsets)


def scheduled(events: list[dict[str, Any]]) -> list[str]:
    return sorted(e["data"]["node_id"] for e in events if e["type"] == "NodeScheduled")
