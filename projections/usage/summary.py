"""A run's LLM usage as people read it: per node and in total (API, CLI, console)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aob.projections.usage.pricing import usd

_COUNTS = ("llm_calls", "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")


def run_usage(rows: Iterable[Mapping[str, Any]], budget: Any = None) -> dict[str, Any]:
    """`llm_usage` rows of one run summed per node (all iterations and attempts) and in
    total. `cost_usd` sums the priced attempts (None when none was priced);
    `unpriced_tokens` counts the tokens of models without a price, whose cost is
    unknown. `budget` is the run's budget as submitted (None: none)."""
    nodes: dict[str, dict[str, Any]] = {}
    total = _empty()
    for row in rows:
        entry = nodes.setdefault(str(row["node_id"]), {"node_id": row["node_id"], **_empty()})
        for target in (entry, total):
            _add(target, row)
    return {
        "total": _finished(total),
        "nodes": [_finished(entry) for entry in nodes.values()],
        "budget": budget,
    }


def _empty() -> dict[str, Any]:
    return {
        **dict.fromkeys(_COUNTS, 0),
        "attempts": 0,
        "models": [],
        "cost_nano_usd": None,
        "unpriced_tokens": 0,
    }


def _add(target: dict[str, Any], row: Mapping[str, Any]) -> None:
    for name in _COUNTS:
        target[name] += int(row[name] or 0)
    target["attempts"] += 1
    if row["model"] not in target["models"]:
        target["models"].append(row["model"])
    cost = row["cost_nano_usd"]
    if cost is None:
        target["unpriced_tokens"] += int(row["total_tokens"] or 0)
    else:
        target["cost_nano_usd"] = (target["cost_nano_usd"] or 0) + int(cost)


def _finished(entry: dict[str, Any]) -> dict[str, Any]:
    nano = entry["cost_nano_usd"]
    return {**entry, "cost_usd": None if nano is None else usd(nano)}
