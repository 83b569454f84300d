"""JSON Schemas that tenants supply (tool parameters, OpenAPI request bodies), used
offline and bounded.

jsonschema resolves a `$ref` it does not hold by fetching it with urllib: outside
the SSRF guard, synchronously and without a timeout, so one registered schema could
stall every tenant's agents. Here nothing is ever retrieved: a registration whose
schema refers outside itself is refused (`check_schema`), and validation resolves
references against an empty registry (plus the bundled metaschemas), so a remote
reference that is stored anyway is a validation problem, never a request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import jsonschema
import referencing
import referencing.exceptions

from aob.events.types import Json

# Nothing to retrieve from: an unknown URI raises `Unretrievable` at once.
OFFLINE: Final[referencing.Registry[Any]] = referencing.Registry()
# A tool's parameters schema: bytes (as compact JSON) and nesting (objects/arrays).
MAX_SCHEMA_BYTES: Final = 64 * 1024
MAX_SCHEMA_DEPTH: Final = 32
_REF_KEYWORDS: Final = ("$ref", "$dynamicRef", "$recursiveRef")


class SchemaRefused(ValueError):
    """A tenant's schema that cannot be used; the message says why."""


def remote_refs(document: Json, where: str = "") -> Iterator[tuple[str, str]]:
    """(pointer, reference) for every `$ref`-like keyword of `document` that does not
    point inside it (only "#..." references are local). Iterative."""
    stack: list[tuple[str, Json]] = [(where, document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for keyword in _REF_KEYWORDS:
                ref = value.get(keyword)
                if isinstance(ref, str) and not ref.startswith("#"):
                    yield f"{path}/{keyword}", ref
            stack.extend((f"{path}/{_escape(k)}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}/{i}", v) for i, v in enumerate(value))


def check_schema(
    schema: Json,
    where: str,
    *,
    max_bytes: int = MAX_SCHEMA_BYTES,
    max_depth: int = MAX_SCHEMA_DEPTH,
) -> None:
    """Refuse (SchemaRefused) a schema that is too large or deep, refers outside itself,
    or is not a JSON Schema (draft 2020-12)."""
    size, depth = _measure(schema)
    if size > max_bytes:
        raise SchemaRefused(f"{where}: the schema has {size} bytes; the limit is {max_bytes}")
    if depth > max_depth:
        raise SchemaRefused(f"{where}: the schema nests deeper than {max_depth} levels")
    refused_refs(schema, where)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        raise SchemaRefused(f"{where} is not a JSON Schema: {error.message}") from None


def refused_refs(document: Json, where: str) -> None:
    """SchemaRefused naming the first reference outside `document`, if any."""
    for pointer, ref in remote_refs(document):
        raise SchemaRefused(
            f"{where}{pointer}: {ref!r} refers outside the document; only local references "
            "(\"#/...\") are allowed: nothing is fetched"
        )


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator of `schema` that resolves references offline only."""
    return jsonschema.Draft202012Validator(schema, registry=OFFLINE)


def problems(schema: dict[str, Any], value: Json, limit: int = 10) -> list[str]:
    """`value`'s problems against `schema` ("path: message"), at most `limit`; a
    reference that cannot be resolved offline is one problem, not an exception."""
    found: list[str] = []
    try:
        for error in validator(schema).iter_errors(value):
            path = "/".join(str(p) for p in error.absolute_path) or "(input)"
            found.append(f"{path}: {error.message}")
            if len(found) == limit:
                break
    except referencing.exceptions.Unresolvable as error:
        found.append(f"the schema refers to {error} outside itself; nothing is fetched")
    return found


def _measure(value: Json) -> tuple[int, int]:
    """(approximate bytes as compact JSON, nesting depth), iteratively."""
    size, deepest = 0, 0
    stack: list[tuple[Json, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            size += 2 + sum(len(str(k)) + 4 for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            size += 2 + len(item)
            stack.extend((v, depth + 1) for v in item)
        else:
            size += len(str(item)) + 2
    return size, deepest


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")
