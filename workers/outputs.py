"""Node and run outputs by reference: large values live in the blob store, events
carry their reference, and whoever evaluates over a context fetches them back.

An output whose JSON text is over `inline_max_bytes` is stored once, content
addressed; `NodeScheduled.output_refs` / `ExpressionRequested.output_refs` name the
upstream outputs held there, so a context is never copied into every task (the log
grows linearly with the work, not with its square).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aob.events.blobs import BlobError, BlobStore
from aob.events.types import Json

_dump = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class OutputError(Exception):
    """An output that cannot be stored or fetched (not JSON, or a missing blob)."""


async def fetch_output(ref: str, blobs: BlobStore) -> Json:
    """The output stored under `ref`."""
    try:
        return json.loads(await blobs.get(ref))
    except BlobError as error:
        raise OutputError(str(error)) from None


@dataclass(frozen=True, slots=True)
class OutputStore:
    """The blob store and the size above which an output is stored there."""

    blobs: BlobStore
    inline_max_bytes: int

    async def store(self, value: Json) -> tuple[Json, str | None]:
        """(inline value, None) for a small output; (None, blob reference) for a large one.

        Raises OutputError when `value` is not JSON (NaN, a set, nesting beyond Python's
        recursion limit): it could not be recorded either way.
        """
        try:
            data = _dump(value).encode()
        except (TypeError, ValueError, RecursionError) as error:
            raise OutputError(f"output is not JSON: {type(error).__name__}: {error}") from None
        if len(data) <= self.inline_max_bytes:
            return value, None
        return None, await self.blobs.put(data)

    async def resolve(self, context: Json, refs: Mapping[str, str]) -> Json:
        """`context` with the outputs named by `refs` fetched into `.nodes`."""
        if not refs or not isinstance(context, dict):
            return context
        nodes: dict[str, Any] = dict(context.get("nodes") or {})
        for node_id, ref in refs.items():
            nodes[node_id] = await fetch_output(ref, self.blobs)
        return {**context, "nodes": nodes}
