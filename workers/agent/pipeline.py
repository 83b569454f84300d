"""The fast lane: ephemeral pipelines over ten primitives, run step by step.

A pipeline is a list of steps `{"op": <primitive>, ...parameters}`. The value flows
from step to step: each step's result is the next step's input, the first step
gets the pipeline's `input` (null when none). A step may save its result under
`"as": name`; `join` reads saved results. Tables are lists of objects.

Primitives: http_request, table_sort, table_filter, table_select, top_k, groupby,
join, jq_transform (real jq, in the engine's jq sandbox), regex_extract (RE2: linear
time, no backreferences or lookaround), parse_date.

Every failure is a `PipelineError` naming the step (index and op) and why, so a
model can fix exactly that step.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aob.events.types import Json
from aob.projections.workflow.expressions import ExpressionError
from aob.workers.sandbox import jq_all, jq_first, jq_truthy
from aob.workers.sandbox.regex import MAX_PATTERN_LENGTH, RegexError, compile_regex

MAX_STEPS = 50
MAX_REGEX_LENGTH = MAX_PATTERN_LENGTH


class PipelineError(Exception):
    """A step failed; `index` is 0-based, the message says which step and why."""

    def __init__(self, index: int, op: str, reason: str) -> None:
        super().__init__(f"step {index} ({op}): {reason}")
        self.index = index
        self.op = op
        self.reason = reason


class StepError(ValueError):
    """Raised inside a primitive; the runner adds which step it was."""


class Fetch(Protocol):
    """Performs one outbound HTTP request (through the SSRF guard).

    `request` holds url and optionally method, query, headers, body; the answer is
    {"status": int, "body": parsed JSON or text, ...}. Failures raise StepError."""

    async def __call__(self, request: Mapping[str, Json]) -> dict[str, Json]: ...


@dataclass
class _Run:
    fetch: Fetch | None
    saved: dict[str, Json]


Primitive = Callable[[Mapping[str, Json], Json, _Run], Awaitable[Json]]


def check_steps(steps: Json) -> list[dict[str, Json]]:
    """`steps` if they can be run: a non-empty array of at most MAX_STEPS objects, each
    with a known "op" (what a composite tool is checked for when registered; each op's
    parameters are checked when it runs). Raises PipelineError."""
    if not isinstance(steps, list) or not steps:
        raise PipelineError(0, "pipeline", "steps must be a non-empty array of step objects")
    if len(steps) > MAX_STEPS:
        raise PipelineError(0, "pipeline", f"{len(steps)} steps > limit {MAX_STEPS}")
    for index, step in enumerate(steps):
        op = step.get("op") if isinstance(step, dict) else None
        if not isinstance(step, dict) or not isinstance(op, str):
            raise PipelineError(index, "?", 'a step must be an object with a string "op"')
        if op not in PRIMITIVES:
            raise PipelineError(index, op, f"unknown op; use one of {', '.join(PRIMITIVES)}")
    return steps


async def run_pipeline(steps: Json, input: Json = None, *, fetch: Fetch | None = None) -> Json:
    """Run `steps` over `input`; the last step's result. Raises PipelineError."""
    run = _Run(fetch, {})
    data = input
    for index, step in enumerate(check_steps(steps)):
        op = str(step["op"])
        primitive = PRIMITIVES[op]
        try:
            data = await primitive(step, data, run)
        except (StepError, ExpressionError) as error:
            raise PipelineError(index, op, str(error)) from None
        name = step.get("as")
        if isinstance(name, str):
            run.saved[name] = data
    return data


# --- parameter helpers -------------------------------------------------------------


def _param(
    step: Mapping[str, Json], key: str, kind: type | tuple[type, ...], default: Any = ...
) -> Any:
    if key not in step:
        if default is ...:
            raise StepError(f"missing parameter {key!r}")
        return default
    value = step[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
        raise StepError(f"parameter {key!r} must be {_kind_name(kind)}, got {_json_type(value)}")
    return value


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        bool: "a boolean",
        list: "an array",
        dict: "an object",
        float: "a number",
    }
    return " or ".join(names.get(k, k.__name__) for k in _types(kind))


def _json_type(value: Json) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _table(data: Json) -> list[dict[str, Json]]:
    if not isinstance(data, list):
        raise StepError(f"input must be a table (an array of objects), got {_json_type(data)}")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise StepError(f"input row {index} is {_json_type(row)}, not an object")
    return data


def _fields(step: Mapping[str, Json], key: str = "by") -> list[str]:
    value = _param(step, key, (str, list))
    fields = [value] if isinstance(value, str) else value
    if not fields or not all(isinstance(f, str) for f in fields):
        raise StepError(f"parameter {key!r} must be a field name or an array of field names")
    return fields


def _sort_key(value: Json) -> tuple[int, Any]:
    """Orders mixed JSON values: null last-ish, then booleans, numbers, strings, others."""
    if value is None:
        return (4, 0)
    if isinstance(value, bool):
        return (0, value)
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, repr(value))


# --- primitives ----------------------------------------------------------------------


async def http_request(step: Mapping[str, Json], data: Json, run: _Run) -> Json:
    """{url, method?, query?, headers?, body?} -> the response body (JSON parsed)."""
    if run.fetch is None:
        raise StepError("outbound HTTP is not available to this agent")
    _param(step, "url", str)
    request = {k: step[k] for k in ("method", "url", "query", "headers", "body") if k in step}
    response = await run.fetch(request)
    return response.get("body")


async def table_sort(step: Mapping[str, Json], data: Json, run: _Run) -> Json:
    """{by: field or [fields], descending?: false}; rows missing a field sort last."""
    rows, fields = _table(data), _fields(step)
    descending = _param(step, "descending", bool, False)
    return sorted(rows, key=lambda row: [_sort_key(row.get(f)) for f in fields], reverse=descending)


_COMPARISONS: dict[str, Callable[[Json, Json], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "gte": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "lte": lambda a, b: a is not None and a <= b,
    "contains": lambda a, b: isinstance(a, str | list) and b in a,
    "in": lambda a, b: isinstance(b, list) and a in b,
}


async def table_filter(step: Mapping[str, Json], data: Json, run: _Run) -> Json:
    """{where: jq boolean over each row} or {field, cmp (eq ne gt gte lt lte contains in), value}.

    (`cmp`, not `op`: a step's `op` names its primitive.)"""
    rows = _table(data)
    if "where" in step:
        program = _param(step, "where", str)
        return [row for row in rows if await jq_truthy(program, row)]
    field = _param(step, "field", str)
    op = _param(step, "cmp", str, "eq")
    compare = _COMPARISONS.get(op)
    if compare is None:
        raise StepError(f"cmp {op!r} is not one of {', '.join(_COMPARISONS)}")
    value = step.get("value")
    kept = []
    for index, row in enumerate(rows):
        try:
            if compare(row.get(field), value):
                kept.append(row)
        except TypeError:
            raise StepError(
                f"row {index}: cannot compare {field}={row.get(field)!r} with {value!r} ({op})"
            ) from None
    return kept


async def table_select(step: Mapping[str, Json], data: Json, run: _Run) -> Json:
    """{fields: [names]} keeps those fields; {fields: {new: old}} also renames."""
    rows = _table(data)
    fields = _param(step, "fields", (list, dict))
    mapping = {f: f for f in fields} if isinstance(fields, list) else fields
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise StepError("fields must be an array of names or an object {new name: field}")
    return [{new: row.get(old) for new, old in mapping.items()} for row in rows]


async def top_k(step: Mapping[str, Json], data: Json, run: _Run) -> Json:
    """{k, by?: field, descending?: true}: the first k items (sorted by `by` first)."""
    k = _param(step, "k", int)
    if k < 0:
        raise StepError("k must be >= 0")
    if not isinstance(data, list):
        raise StepError(f"input must be an array, got {_json_type(data)}")
    if "by" in step:
        data = await table_sort(
            {"by": step["by"], "descending": step.get("descending", True)}, data, run
        )
    return data[:k]


_AGGREGATES = ("count", "sum", "avg", "min", "max", "list", "first")


async def groupby(step: Mapping[str, Json], data: Json, run: _Run) -> Json:
    """{by: field(s), aggregations?: {name: {op: count|sum|avg|min|max|list|first, field}}}.

    One row per group, in order of first appearance: the `by` fields plus each
    aggregation (a `count` when none are given)."""
    rows, fields = _table(data), _fields(step)
    aggregations = _param(step, "aggregations", dict, {"count": {"op": "count"}})
    groups: dict[str, tuple[dict[str, Json], list[dict[str, Json]]]] = {}
    for row in rows:
        key_values = {f: row.get(f) for f in fields}
        groups.setdefault(repr(list(key_values.values())), (key_values, []))[1].append(row)
    return [
        {
            **key_values,
            **{name: _aggregate(name, spec, members) for name, spec in aggregations.items()},
        }
        for key_values, members in groups.values()
    ]


def _aggregate(name: str, spec: Json, rows: list[dict[str, Json]]) -> Json:
    if not isinstance(spec, dict) or spec.get("op") not in _AGGREGATES:
        raise StepError(f"aggregation {name!r} needs an op, one of {', '.join(_AGGREGATES)}")
    op = spec["op"]
    if op == "count":
        return len(rows)
    field = spec.get("field")
    if not isinstance(field, str):
        raise StepError(f"aggregation {name!r} ({op}) needs a string 'field'")
    values = [row[field] for row in rows if row.get(field) is not None]
    if op == "list":
        return values
    if op == "first":
        return values[0] if values else None
    if op in ("min", "max"):
        try:
            return (min if op == "min" else max)(values) if values else None
        except TypeError:
            message = f"aggregation {name!r}: values of {field!r} are not comparable"
            raise StepError(message) from None
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != len(values):
        raise StepError(f"aggregation {name!r} ({op}): field {field!r} has non-numeric values")
    if op == "sum":
        return sum(numbers)
    return sum(numbers) / len(numbers) if numbers else None


async def join(step: Mapping[str, Json], data: Json, run: _Run) -> Json:
    """{with: saved result name, or rows: [...], on: field or {left, right}, how?: inner|left}.

    Each left row is merged with every matching right row (right fields win ties)."""
    left = _table(data)
    if "with" in step:
        name = _param(step, "with", str)
        if name not in run.saved:
            known = ", ".join(sorted(run.saved)) or "none"
            raise StepError(f'no saved result {name!r} (saved so far: {known}; save with "as")')
        right = _table(run.saved[name])
    else:
        right = _table(_param(step, "rows", list))
    on = _param(step, "on", (str, dict))
    left_key, right_key = (on, on) if isinstance(on, str) else (on.get("left"), on.get("right"))
    if not isinstance(left_key, str) or not isinstance(right_key, str):
        raise StepError('on must be a field name or {"left": field, "right": field}')
    how = _param(step, "how", str, "inner")
    if how not in ("inner", "left"):
        raise StepError(f"how must be inner or left, not {how!r}")
    index: dict[str, list[dict[str, Json]]] = {}
    for row in right:
        index.setdefault(repr(row.get(right_key)), []).append(row)
    joined: list[dict[str, Json]] = []
    for row in left:
        matches = index.get(repr(row.get(left_key)), [])
        joined.extend({**row, **match} for match in matches)
        if not matches and how == "left":
            joined.append(dict(row))
    return joined


async def jq_transform(step: Mapping[str, Json], data: Json, run: _Run) -> Json:
    """{expr: jq program, all?: false}: its first output (every output with all: true)."""
    program = _param(step, "expr", str)
    if _param(step, "all", bool, False):
        return await jq_all(program, data)
    return await jq_first(program, data)


async def regex_extract(step: Mapping[str, Json], data: Json, run: _Run) -> Json:
    """{pattern, field?, into?, group?: 0, all?: false}.

    On a string: the match (or every match). On a table: each row gets `into`
    (default "<field>_match") from its `field`. No match gives null (or [])."""
    pattern = _param(step, "pattern", str)
    try:
        regex = compile_regex(pattern)
    except RegexError as error:
        raise StepError(str(error)) from None
    group = _param(step, "group", (int, str), 0)
    every = _param(step, "all", bool, False)

    def extract(text: Json) -> Json:
        if not isinstance(text, str):
            return [] if every else None
        try:
            if every:
                return [m.group(group) for m in regex.finditer(text)]
            match = regex.search(text)
            return match.group(group) if match else None
        except IndexError:
            raise StepError(f"pattern has no group {group!r}") from None

    if "field" not in step:
        if not isinstance(data, str):
            raise StepError(f"input is {_json_type(data)}: give a 'field' to extract from rows")
        return extract(data)
    field = _param(step, "field", str)
    into = _param(step, "into", str, f"{field}_match")
    return [{**row, into: extract(row.get(field))} for row in _table(data)]


async def parse_date(step: Mapping[str, Json], data: Json, run: _Run) -> Json:
    """{field?, into?, format?}: dates as ISO 8601 (UTC when the input has a zone).

    Understands ISO 8601, RFC 2822 (e-mail/HTTP dates), epoch seconds or ms, or a
    strptime `format`. On a table, `field` of each row is parsed into `into`
    (default: the field itself)."""
    fmt = _param(step, "format", str, None)
    if "field" not in step:
        return _parse_one(data, fmt)
    field = _param(step, "field", str)
    into = _param(step, "into", str, field)
    parsed = []
    for index, row in enumerate(_table(data)):
        try:
            parsed.append({**row, into: _parse_one(row.get(field), fmt)})
        except StepError as error:
            raise StepError(f"row {index}: {error}") from None
    return parsed


def _parse_one(value: Json, fmt: str | None) -> str:
    moment = _to_datetime(value, fmt)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.isoformat()


def _to_datetime(value: Json, fmt: str | None) -> dt.datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) >= 1e11 else value  # epoch ms vs seconds
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    if not isinstance(value, str):
        raise StepError(f"cannot parse {_json_type(value)} as a date")
    text = value.strip()
    if fmt is not None:
        try:
            return dt.datetime.strptime(text, fmt)
        except ValueError as error:
            raise StepError(f"{text!r} does not match format {fmt!r}: {error}") from None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        raise StepError(
            f"cannot parse {text!r} as a date: use ISO 8601, RFC 2822 or give a strptime format"
        ) from None


PRIMITIVES: dict[str, Primitive] = {
    "http_request": http_request,
    "table_sort": table_sort,
    "table_filter": table_filter,
    "table_select": table_select,
    "top_k": top_k,
    "groupby": groupby,
    "join": join,
    "jq_transform": jq_transform,
    "regex_extract": regex_extract,
    "parse_date": parse_date,
}
