"""Two runs side by side: what `GET /api/v1/runs/{a}/diff/{b}` answers and `aob run diff`
and the console's compare view show.

Pure: it takes the two runs as the read models give them (`Commands.run`: definition,
inputs, nodes with outputs fetched) and answers the definition's difference (a unified
diff of its YAML and the JSON Patch from A to B), the inputs', each node's status side
by side and the difference of its output, and the run outputs'.

Bounded: every value shown is cut at `max_chars` characters of its JSON text, with a
marker saying how much was left out, and once the diffs of one answer pass
`max_total_chars`, the remaining ones are left out with a marker too.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, Final

import jsonpatch
import yaml

from aob.projections.workflow.materialize import json_equal

MAX_VALUE_CHARS: Final = 20_000
MAX_TOTAL_CHARS: Final = 500_000
LEFT_OUT: Final = "(diff left out: this answer's diffs passed {limit} characters)"


@dataclass
class _Budget:
    """What an answer's diffs may still spend, in characters."""

    left: int
    max_chars: int
    truncated: bool = False

    def diff(self, a: Any, b: Any, name: str, *, as_yaml: bool = False) -> str:
        """The unified diff of `a` and `b` (JSON text, or YAML for definitions); ""
        when equal."""
        if json_equal(a, b):
            return ""
        if self.left <= 0:
            self.truncated = True
            return LEFT_OUT.format(limit=MAX_TOTAL_CHARS)
        before, after = (self._text(v, as_yaml) for v in (a, b))
        lines = difflib.unified_diff(
            before.splitlines(), after.splitlines(), f"a/{name}", f"b/{name}", lineterm=""
        )
        text = "\n".join(lines)
        self.left -= len(text)
        return text

    def _text(self, value: Any, as_yaml: bool) -> str:
        if as_yaml:
            text = yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=100)
        else:
            text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
        if len(text) <= self.max_chars:
            return text
        self.truncated = True
        cut = len(text) - self.max_chars
        return f"{text[: self.max_chars]}\n… (truncated: {cut} more characters)"


def compare_runs(
    a: dict[str, Any],
    b: dict[str, Any],
    *,
    forks: tuple[Any, Any] = (None, None),
    max_chars: int = MAX_VALUE_CHARS,
    max_total_chars: int = MAX_TOTAL_CHARS,
) -> dict[str, Any]:
    """Run `b` against run `a`. `forks` are their RunSubmitted checkpoints (the parent,
    fork point and edits of a fork, or None)."""
    budget = _Budget(max_total_chars, max_chars)
    definition = _section(budget, a.get("definition"), b.get("definition"), "definition")
    patch = _definition_patch(a.get("definition"), b.get("definition"), max_chars)
    inputs = _section(budget, a.get("inputs"), b.get("inputs"), "inputs")
    nodes = [_node_row(budget, node_id, x, y) for node_id, x, y in _paired(a, b)]
    output = _section(budget, a.get("output"), b.get("output"), "output")
    same = (
        definition["equal"]
        and inputs["equal"]
        and output["equal"]
        and a.get("status") == b.get("status")
        and all(n["status_equal"] and n["output_equal"] for n in nodes)
    )
    return {
        "a": _summary(a, forks[0]),
        "b": _summary(b, forks[1]),
        "identical": same,
        "definition": {**definition, "patch": patch},
        "inputs": inputs,
        "nodes": nodes,
        "output": output,
        "truncated": budget.truncated,
    }


def _summary(run: dict[str, Any], fork: Any) -> dict[str, Any]:
    keys = ("run_id", "status", "workflow_id", "version", "tag", "submitted_at", "finished_at")
    summary = {k: run.get(k) for k in keys}
    summary["error"] = run.get("error")
    summary["fork"] = fork if isinstance(fork, dict) and fork.get("run_id") else None
    return summary


def _section(budget: _Budget, a: Any, b: Any, name: str) -> dict[str, Any]:
    equal = a == b
    return {
        "equal": equal,
        "diff": "" if equal else budget.diff(a, b, name, as_yaml=name == "definition"),
    }


def _definition_patch(a: Any, b: Any, max_chars: int) -> list[Any] | None:
    """The JSON Patch from A's definition to B's; None when it is too long to show."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None
    operations: list[Any] = jsonpatch.make_patch(a, b).patch
    return operations if len(json.dumps(operations)) <= max_chars else None


def _latest(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each node's latest instance (highest iteration), in the order they ran."""
    latest: dict[str, dict[str, Any]] = {}
    for node in run.get("nodes") or []:
        known = latest.get(node["node_id"])
        if known is None or (node.get("iteration") or 0) >= (known.get("iteration") or 0):
            latest[node["node_id"]] = node
    return latest


def _paired(
    a: dict[str, Any], b: dict[str, Any]
) -> list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
    """Node ids of either run: A's definition order, then B's new ones, then any the
    read models know of but no definition names."""
    left, right = _latest(a), _latest(b)
    order: dict[str, None] = {}
    for run in (a, b):
        nodes = (run.get("definition") or {}).get("nodes")
        for node in nodes if isinstance(nodes, list) else []:
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                order.setdefault(node["id"])
    for node_id in [*left, *right]:
        order.setdefault(node_id)
    return [(n, left.get(n), right.get(n)) for n in order]


def _node_row(
    budget: _Budget, node_id: str, a: dict[str, Any] | None, b: dict[str, Any] | None
) -> dict[str, Any]:
    out_a = a.get("output") if a else None
    out_b = b.get("output") if b else None
    status_a = a.get("status") if a else None
    status_b = b.get("status") if b else None
    return {
        "node_id": node_id,
        "a": _node(a),
        "b": _node(b),
        "status_equal": status_a == status_b,
        "output_equal": json_equal(out_a, out_b),
        "output_diff": budget.diff(out_a, out_b, f"nodes/{node_id}/output"),
    }


def _node(node: dict[str, Any] | None) -> dict[str, Any] | None:
    if node is None:
        return None
    keys = ("type", "status", "attempt", "iteration", "error", "skip_reason", "carried_from")
    return {k: node.get(k) for k in keys}
