"""The node types aob ships, each described by one JSON Schema of its config (pure data,
the `*.json` files beside this module).

The same files validate definitions (`definition.check_definition`), are served inside
the workflow schema (`GET /api/v1/schema/workflow`) and generate docs/reference/nodes.md
(`python -m aob.projections.workflow.reference`). Each also holds `x-output`, the
schema of the node's output, and `examples`, configs that must validate.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

import jsonschema


def _load() -> dict[str, dict[str, Any]]:
    schemas: dict[str, dict[str, Any]] = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            schema = json.loads(entry.read_text(encoding="utf-8"))
            schemas[schema["title"]] = schema
    return schemas


_SCHEMAS = _load()
_VALIDATORS = {name: jsonschema.Draft202012Validator(s) for name, s in _SCHEMAS.items()}

# The types whose config the coordinator reads itself (a transform's program, an
# approval's routes), so every definition it runs is checked against them. The other
# types' configs are their workers' business: the API checks them at validation and
# submission, and a run recorded before a worker's schema changed still replays alike.
FOLD_CHECKED_TYPES: frozenset[str] = frozenset({"transform", "hitl"})
# The coordinator has always let fields it does not read through in a transform's
# config (recorded runs hold some), so it checks that config open; the API refuses
# them, as the typos they usually are.
_OPEN_IN_FOLD: frozenset[str] = frozenset({"transform"})

# The setting that makes unknown node types an error instead of a skipped node.
UNKNOWN_TYPES_SETTING = "AOB_UNKNOWN_NODE_TYPES"


_OPEN_VALIDATORS = {
    name: jsonschema.Draft202012Validator({**_SCHEMAS[name], "additionalProperties": True})
    for name in _OPEN_IN_FOLD
}


def node_type_names() -> list[str]:
    """The node types with a config schema, sorted."""
    return list(_SCHEMAS)


def node_type_schema(name: str) -> dict[str, Any] | None:
    """The config schema of node type `name` (a copy), or None when it has none."""
    schema = _SCHEMAS.get(name)
    return None if schema is None else copy.deepcopy(schema)


def config_required(name: str) -> list[str]:
    """The fields a config of node type `name` must have."""
    schema = _SCHEMAS.get(name) or {}
    return list(schema.get("required") or [])


def config_validator(name: str, *, fold: bool = False) -> jsonschema.Draft202012Validator | None:
    """The validator of node type `name`'s config (None when it has no schema); with
    `fold`, as strict as the coordinator is with it."""
    if fold and name in _OPEN_IN_FOLD:
        return _OPEN_VALIDATORS.get(name)
    return _VALIDATORS.get(name)


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate `word` most likely misspells, or None when none is close."""
    matches = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" for the closest candidate, or ""."""
    match = closest(word, candidates)
    return "" if match is None else f" (did you mean {match!r}?)"


def unknown_type_reason(node_type: str, known_types: Iterable[str]) -> str:
    """Why a node of `node_type` is skipped, e.g. "unknown node type 'htpp' (did you
    mean 'http'?)"; the coordinator records it in NodeSkipped."""
    return f"unknown node type {node_type!r}{did_you_mean(node_type, known_types)}"


def unknown_type_message(node_type: str, known_types: Iterable[str], *, refused: bool) -> str:
    """A validation warning (or, when `refused`, problem) for a node of unknown type."""
    reason = unknown_type_reason(node_type, known_types)
    if refused:
        return f"{reason}: no worker runs it, and {UNKNOWN_TYPES_SETTING}=error refuses it"
    return (
        f"{reason}: no worker runs it, so the node will be skipped and its dependents run "
        f"({UNKNOWN_TYPES_SETTING}=error refuses such workflows)"
    )


__all__ = [
    "FOLD_CHECKED_TYPES",
    "UNKNOWN_TYPES_SETTING",
    "closest",
    "config_required",
    "config_validator",
    "did_you_mean",
    "node_type_names",
    "node_type_schema",
    "unknown_type_message",
    "unknown_type_reason",
]
