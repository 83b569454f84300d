"""JSON Schemas that tenants supply (tool parameters, OpenAPI request bodies), used
offline and bounded.

jsonschema resolves a `$ref` it does not hold by fetching it with urllib: outside
the SSRF guard, synchronously and without a timeout, so one registered schema could
stall every tenant's agents. Here nothing is ever retrieved: a registration whose
schema refers outside itself is refused (`check_schema`), and validation resolves
references against an empty registry (plus the bundled metaschemas), so a remote
reference that is stored anyway is a validation problem, never a request.

jsonschema also runs `pattern` and `patternProperties` with Python's `re`, which
backtracks: `(a+)+$` against a 40-character argument would hold the loop for
minutes. Here they run on RE2 (`aob.workers.sandbox.regex`, linear in the text); a
pattern RE2 cannot compile is refused at registration, and `unevaluatedProperties`
beside `patternProperties` (jsonschema would match those with `re`) is refused too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final, cast

import jsonschema
import referencing
import referencing.exceptions
from jsonschema import ValidationError
from jsonschema.protocols import Validator

from aob.events.types import Json
from aob.workers.sandbox.regex import RegexError, compile_regex

# Nothing to retrieve from: an unknown URI raises `Unretrievable` at once.
OFFLINE: Final[referencing.Registry[Any]] = referencing.Registry()
# A tool's parameters schema: bytes (as compact JSON) and nesting (objects/arrays).
MAX_SCHEMA_BYTES: Final = 64 * 1024
MAX_SCHEMA_DEPTH: Final = 32
_REF_KEYWORDS: Final = ("$ref", "$dynamicRef", "$recursiveRef")
# Keywords whose values are data, not schemas: a "pattern" key in there is no regex.
_DATA_KEYWORDS: Final = frozenset({"const", "enum", "default", "examples", "example"})
UNEVALUATED_BESIDE_PATTERNS: Final = (
    "unevaluatedProperties beside patternProperties is not supported (those would be "
    "matched by a backtracking regex engine); use additionalProperties"
)


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
    check_document(schema, where)
    try:
        Re2Validator.check_schema(schema, format_checker=SCHEMA_FORMATS)
    except jsonschema.SchemaError as error:
        raise SchemaRefused(f"{where} is not a JSON Schema: {error.message}") from None


def check_document(document: Json, where: str) -> None:
    """Refuse (SchemaRefused) a document (a schema, or an OpenAPI document holding
    schemas) with a reference outside itself or a regex RE2 cannot run."""
    refused_refs(document, where)
    refused_patterns(document, where)


def refused_patterns(document: Json, where: str) -> None:
    """SchemaRefused naming the first `pattern` or `patternProperties` key RE2 cannot
    compile, or `unevaluatedProperties` beside `patternProperties`."""
    for pointer, pattern in patterns(document):
        try:
            compile_regex(pattern)
        except RegexError as error:
            raise SchemaRefused(f"{where}{pointer}: pattern {pattern!r:.100}: {error}") from None
    if unevaluated_beside_patterns(document):
        raise SchemaRefused(f"{where}: {UNEVALUATED_BESIDE_PATTERNS}")


def patterns(document: Json) -> Iterator[tuple[str, str]]:
    """(pointer, regex) for every `pattern` and `patternProperties` key of the schemas
    in `document` (not inside data keywords such as `default`). Iterative."""
    for path, schema in _schema_objects(document):
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            yield f"{path}/pattern", pattern
        keyed = schema.get("patternProperties")
        for key in keyed if isinstance(keyed, dict) else ():
            yield f"{path}/patternProperties/{_escape(key)}", key


def unevaluated_beside_patterns(document: Json) -> bool:
    """Whether `document` has both keywords somewhere: jsonschema's evaluation of
    `unevaluatedProperties` matches patternProperties keys with `re`."""
    seen = {"patternProperties": False, "unevaluatedProperties": False}
    for _, schema in _schema_objects(document):
        for keyword in seen:
            seen[keyword] = seen[keyword] or keyword in schema
    return all(seen.values())


def _schema_objects(document: Json) -> Iterator[tuple[str, dict[str, Any]]]:
    stack: list[tuple[str, Json]] = [("", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            yield path, value
            stack.extend(
                (f"{path}/{_escape(k)}", v) for k, v in value.items() if k not in _DATA_KEYWORDS
            )
        elif isinstance(value, list):
            stack.extend((f"{path}/{i}", v) for i, v in enumerate(value))


def refused_refs(document: Json, where: str) -> None:
    """SchemaRefused naming the first reference outside `document`, if any."""
    for pointer, ref in remote_refs(document):
        raise SchemaRefused(
            f"{where}{pointer}: {ref!r} refers outside the document; only local references "
            '("#/...") are allowed: nothing is fetched'
        )


# --- validation on RE2 ------------------------------------------------------------------


def _regex(pattern: str) -> tuple[Any, ValidationError | None]:
    """The compiled RE2 pattern, or the validation error saying it cannot be used (a
    schema stored before patterns were checked at registration)."""
    try:
        return compile_regex(pattern), None
    except RegexError as error:
        return None, ValidationError(f"pattern {pattern!r:.100} cannot be used: {error}")


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "string"):
        return
    regex, unusable = _regex(pattern)
    if unusable is not None:
        yield unusable
    elif regex.search(instance) is None:
        yield ValidationError(f"{instance!r:.200} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, keyed: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in keyed.items():
        regex, unusable = _regex(pattern)
        if unusable is not None:
            yield unusable
            continue
        for key, value in instance.items():
            if regex.search(key) is not None:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The keys of `instance` neither `properties` nor a `patternProperties` key
    covers (an unusable pattern covers nothing: `patternProperties` reports it)."""
    properties = schema.get("properties", {})
    keyed = schema.get("patternProperties", {})
    regexes = [regex for regex, _ in map(_regex, keyed) if regex is not None]
    return [
        key
        for key in instance
        if key not in properties and not any(r.search(key) is not None for r in regexes)
    ]


def _additional_properties(
    validator: Any, allowed: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[Any]:
    """jsonschema's `additionalProperties`, with patternProperties matched on RE2."""
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(allowed, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], allowed, path=extra)
    elif not allowed and extras:
        listed = ", ".join(repr(extra) for extra in sorted(extras, key=str))
        yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


# Draft 2020-12 with every regex on RE2. (`unevaluatedProperties` beside
# `patternProperties` is refused before any validation: see `schema_errors`.)
Re2Validator: Final[Any] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    validators={
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)

# The metaschema checks `pattern` values as the "regex" format: on RE2 too.
SCHEMA_FORMATS: Final = jsonschema.FormatChecker()
SCHEMA_FORMATS.checkers = {
    **jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers,
    "regex": (compile_regex, (RegexError,)),
}


def validator(schema: dict[str, Any]) -> Validator:
    """A validator of `schema` that resolves references offline only and runs its
    regexes on RE2."""
    return cast(Validator, Re2Validator(schema, registry=OFFLINE))


def schema_errors(schema: dict[str, Any], value: Json) -> Iterator[tuple[list[str | int], str]]:
    """(path in `value`, message) for each of `value`'s problems against `schema`. A
    reference that cannot be resolved offline, or a schema that cannot be evaluated
    with linear-time regexes, is one problem, not an exception."""
    if unevaluated_beside_patterns(schema):
        yield [], f"the schema cannot be used: {UNEVALUATED_BESIDE_PATTERNS}"
        return
    try:
        for error in validator(schema).iter_errors(value):
            yield list(error.absolute_path), error.message
    except referencing.exceptions.Unresolvable as error:
        yield [], f"the schema refers to {error} outside itself; nothing is fetched"


def problems(schema: dict[str, Any], value: Json, limit: int = 10) -> list[str]:
    """`value`'s problems against `schema` ("path: message"), at most `limit`."""
    found: list[str] = []
    for path, message in schema_errors(schema, value):
        found.append(f"{'/'.join(map(str, path)) or '(input)'}: {message}")
        if len(found) == limit:
            break
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
