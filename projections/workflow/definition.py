"""Loading and validating workflow definitions (JSON or YAML, same structure).

`validate_definition` reports every problem at once, each with a JSON Pointer,
so an editor or API client can show them all; it never raises, whatever JSON it
is given, because definitions come from users and from agents' patches.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import jsonschema
import orjson
import yaml

from aob.events.types import Json

from .expressions import ExpressionError, compile_jq
from .graph import reachable, shortest_cycle, strongly_connected
from .node_types import (
    FOLD_CHECKED_TYPES,
    closest,
    config_required,
    config_validator,
    did_you_mean,
    node_type_names,
    node_type_schema,
    unknown_type_message,
)

Format = Literal["json", "yaml"]
# What a node of a type no worker runs means: skipped with a warning (the default), or
# a refused definition (AOB_UNKNOWN_NODE_TYPES).
UnknownTypes = Literal["skip", "error"]

_SCHEMA: dict[str, Any] = json.loads(
    resources.files(__package__).joinpath("schema.json").read_text(encoding="utf-8")
)
_VALIDATOR = jsonschema.Draft202012Validator(_SCHEMA)
_MAX_MESSAGE = 240
_MAX_LOADED_VALUES = 1_000_000  # bounds YAML alias expansion ("billion laughs")


def _with_node_types(base: dict[str, Any]) -> dict[str, Any]:
    """`base` with each shipped node type's config schema as $defs/config.<type>, and
    the rule that a node of that type has such a config (for editors and clients)."""
    schema = copy.deepcopy(base)
    rules: list[dict[str, Any]] = []
    for name in node_type_names():
        config = node_type_schema(name)
        assert config is not None
        schema["$defs"][f"config.{name}"] = config
        then: dict[str, Any] = {"properties": {"config": {"$ref": f"#/$defs/config.{name}"}}}
        if config.get("required"):
            then["required"] = ["config"]
        rules.append(
            {"if": {"properties": {"type": {"const": name}}, "required": ["type"]}, "then": then}
        )
    schema["$defs"]["node"]["allOf"] = rules
    return schema


_SERVED_SCHEMA = _with_node_types(_SCHEMA)


def workflow_schema() -> dict[str, Any]:
    """The JSON Schema of the definition format, with the config of every node type aob
    ships (a copy: callers may mutate it)."""
    return copy.deepcopy(_SERVED_SCHEMA)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document; `path` is a JSON Pointer into it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '/'}: {self.message}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits of one definition: they bound the coordinator's work per run, and
    validation's: they are all checked before anything is compiled.

    Each is a setting of the API (`SETTING_NAMES`), which may only tighten it: the
    coordinator validates every run's definition with the defaults.
    """

    max_nodes: int = 500
    max_edges: int = 2000
    max_document_bytes: int = 1 << 20
    # Objects and arrays within each other (the API's bound on JSON bodies is 64 too).
    max_depth: int = 64
    # Bytes of one jq program (an edge's `when`, a transform's `expr`, the run's
    # `output`, a `{{ }}` placeholder of a hitl node).
    max_expression_bytes: int = 16 * 1024
    # Distinct jq programs in one definition: compiling one costs about a millisecond.
    max_expressions: int = 500


# The setting that configures each limit, named in the problems that report it.
SETTING_NAMES: Mapping[str, str] = {
    "max_nodes": "AOB_WORKFLOW_MAX_NODES",
    "max_edges": "AOB_WORKFLOW_MAX_EDGES",
    "max_document_bytes": "AOB_WORKFLOW_MAX_DOCUMENT_BYTES",
    "max_depth": "AOB_WORKFLOW_MAX_DEPTH",
    "max_expression_bytes": "AOB_WORKFLOW_MAX_EXPRESSION_BYTES",
    "max_expressions": "AOB_WORKFLOW_MAX_EXPRESSIONS",
}


class DefinitionError(ValueError):
    """A definition cannot be used. `line`/`column` are 1-based when known."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None):
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(where + message)
        self.line = line
        self.column = column


class InvalidDefinition(DefinitionError):
    """A parsed definition breaks the rules listed in `problems`."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        shown = "; ".join(str(p) for p in self.problems[:5])
        more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"invalid workflow definition: {shown}{more}")


# --- loading -----------------------------------------------------------------------


def load_definition(text: str, *, format: Format | None = None) -> dict[str, Any]:
    """Parse a definition. Without `format`, JSON is tried first, then YAML.

    The result holds JSON values only (YAML timestamps stay strings; binary, sets,
    non-finite floats and non-string keys are refused) and shares no sub-objects,
    so YAML aliases cannot make later in-place patches change two places at once.
    """
    try:
        if format == "json" or (format is None and _looks_like_json(text)):
            raw = _parse_json(text)
        else:
            raw = _parse_yaml(text)
        doc = _plain_json(raw, "", [_MAX_LOADED_VALUES])
    except RecursionError:
        raise DefinitionError("the document nests too deeply") from None
    if not isinstance(doc, dict):
        raise DefinitionError("a workflow definition must be an object (a mapping) at top level")
    return doc


def _looks_like_json(text: str) -> bool:
    """JSON if it parses as JSON; YAML is (nearly) a superset so it is the fallback."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _parse_json(text: str) -> Json:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise DefinitionError(error.msg, line=error.lineno, column=error.colno) from None


def _unique_keys(pairs: list[tuple[str, Json]]) -> dict[str, Json]:
    """A JSON object hook refusing duplicate keys, which would silently drop data."""
    result: dict[str, Json] = {}
    for key, value in pairs:
        if key in result:
            raise DefinitionError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Json:
    raise DefinitionError(f"{name} is not a JSON number")


def _parse_yaml(text: str) -> Json:
    try:
        return yaml.load(text, Loader=_JsonLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        message = " ".join(str(p) for p in (error.context, error.problem) if p)
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise DefinitionError(message or "invalid YAML", line=line, column=column) from None
    except yaml.YAMLError as error:
        raise DefinitionError(f"invalid YAML: {error}") from None


class _JsonLoader(yaml.SafeLoader):
    """SafeLoader restricted to what JSON can hold, refusing duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            key = (key_node.tag, str(key_node.value))
            if key_node.tag != "tag:yaml.org,2002:merge" and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _refuse_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Json:
    raise yaml.constructor.ConstructorError(
        None, None, f"{node.tag} values are not JSON", node.start_mark
    )


# Timestamps stay strings ("2024-01-01" is a fine description); these tags have no
# JSON counterpart.
_JsonLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag in ("timestamp", "binary", "set", "omap", "pairs"):
    _JsonLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)


def _plain_json(value: Json, path: str, budget: list[int]) -> Json:
    """A fresh copy of `value` made of JSON types only, or DefinitionError.

    `budget` counts values left to copy, so aliased YAML cannot expand without end.
    """
    budget[0] -= 1
    if budget[0] < 0:
        raise DefinitionError("the document is too large once YAML aliases are expanded")
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise DefinitionError(f"at {path or '/'}: key {key!r} is not a string")
        return {k: _plain_json(v, f"{path}/{_escape(k)}", budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v, f"{path}/{i}", budget) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise DefinitionError(f"at {path or '/'}: {value} is not a JSON number")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise DefinitionError(f"at {path or '/'}: {type(value).__name__} is not a JSON value")


# --- validation ----------------------------------------------------------------------

DEFAULT_LIMITS = Limits()


def canonical_digest(doc: Json) -> bytes | None:
    """A digest of `doc`'s JSON with keys sorted: equal documents share it, so work on
    a document (validating, compiling) can be kept by it. None when `doc` is not JSON.

    orjson writes it (a sixth of the standard library's cost, a run's definition is
    compiled at every fold); text holding null, where orjson also writes NaN, and what
    orjson refuses (integers past 64 bits) are written by the standard library, which
    spells NaN apart from null."""
    try:
        text = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        text = b"null"
    if b"null" in text:
        try:
            text = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        except (TypeError, ValueError, RecursionError):
            return None
    return hashlib.blake2b(text, digest_size=32).digest()


def document_size(doc: Json) -> int:
    """Bytes of `doc` as compact UTF-8 JSON; ValueError/TypeError if it is not JSON."""
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return len(text.encode("utf-8"))


def validate_definition(doc: Json, limits: Limits = DEFAULT_LIMITS) -> list[Problem]:
    """Every problem of `doc` as a workflow definition; empty when it is valid.

    This is what the coordinator holds every run's definition to: the format, the
    graph, the jq programs, and the configs of the types it reads itself
    (FOLD_CHECKED_TYPES). `check_definition` adds what the API checks on top.

    The size and count limits come first, and when one is broken they are all that
    is reported: the other checks (schema, graph, compiling jq) cost time that grows
    with the document, and must not be spent on one that is refused anyway.
    """
    return bound_problems(doc, limits) or _problems(doc, limits, FOLD_CHECKED_TYPES, fold=True)


@dataclass(frozen=True, slots=True)
class Checked:
    """What the API found in a definition: `problems` refuse it, `warnings` do not."""

    problems: list[Problem]
    warnings: list[Problem] = field(default_factory=list)


def check_definition(
    doc: Json,
    limits: Limits = DEFAULT_LIMITS,
    *,
    known_types: Collection[str],
    unknown_types: UnknownTypes = "skip",
) -> Checked:
    """`validate_definition`, plus every shipped node type's config schema, plus the
    nodes whose type is not in `known_types` (what the platform can run): warnings,
    or problems when `unknown_types` is "error"."""
    problems = bound_problems(doc, limits)
    if problems:
        return Checked(problems)
    problems = _problems(doc, limits, frozenset(node_type_names()), fold=False)
    unknown = unknown_type_problems(doc, known_types, refused=unknown_types == "error")
    if unknown_types == "error":
        return Checked(problems + unknown)
    return Checked(problems, unknown)


def _problems(
    doc: Json, limits: Limits, config_types: frozenset[str], *, fold: bool
) -> list[Problem]:
    """The problems of a document within the limits: schema, configs, then the graph
    and jq. Graph checks need a list of nodes: without one (a `nodez` typo), every edge
    would report its ends missing, consequences of the one problem already reported."""
    problems = _explained(_VALIDATOR, doc)
    if not isinstance(doc, dict):
        return problems
    problems = sorted(
        problems + _config_problems(doc, config_types, fold=fold),
        key=lambda p: _pointer_key(p.path),
    )
    graph = _graph(doc)
    checks = _SEMANTIC_CHECKS if isinstance(doc.get("nodes"), list) else _NODELESS_CHECKS
    for check in checks:
        problems.extend(check(doc, graph, limits))
    return problems


def unknown_type_problems(
    doc: Json, known_types: Collection[str], *, refused: bool
) -> list[Problem]:
    """One per node whose type is not in `known_types`, naming the type it most likely
    misspells; worded as a refusal when `refused`, else as a warning."""
    if not isinstance(doc, dict):
        return []
    return [
        Problem(
            f"/nodes/{index}/type",
            unknown_type_message(node["type"], known_types, refused=refused),
        )
        for index, node in _items(doc, "nodes")
        if isinstance(node.get("type"), str) and node["type"] not in known_types
    ]


def _config_problems(
    doc: Mapping[str, Json], types: frozenset[str], *, fold: bool
) -> list[Problem]:
    """Each node's config against its type's schema, for the types in `types` (with
    `fold`, as strict as the coordinator is: see `config_validator`)."""
    problems: list[Problem] = []
    for index, node in _items(doc, "nodes"):
        node_type = node.get("type")
        if not isinstance(node_type, str) or node_type not in types:
            continue
        validator = config_validator(node_type, fold=fold)
        if validator is None:
            continue
        if "config" not in node:
            required = config_required(node_type)
            if required:
                fields = " and ".join(repr(f) for f in required)
                problems.append(
                    Problem(
                        f"/nodes/{index}",
                        f"'config' is a required property: a node of type "
                        f"{node_type!r} needs {fields} in its config",
                    )
                )
        elif isinstance(node["config"], dict):  # else the definition's schema reports it
            problems += _explained(validator, node["config"], f"/nodes/{index}/config")
    return problems


def _over(limit: str, limits: Limits) -> str:
    """ "limit N (SETTING)", for a problem's message."""
    return f"limit {getattr(limits, limit)} ({SETTING_NAMES[limit]})"


def bound_problems(doc: Json, limits: Limits = DEFAULT_LIMITS) -> list[Problem]:
    """The size, depth and count limits `doc` breaks; cheap (linear in its size, no
    jq compiled), so it can run on anything a caller sends."""
    try:
        size = document_size(doc)
    except RecursionError:
        return [Problem("", f"the document nests too deeply: {_over('max_depth', limits)}")]
    except (TypeError, ValueError):
        return [Problem("", "the document is not JSON")]
    if size > limits.max_document_bytes:
        return [
            Problem("", f"document too large: {size} bytes > {_over('max_document_bytes', limits)}")
        ]
    deep = _too_deep(doc, limits.max_depth)
    if deep is not None:
        return [Problem(deep, f"nested too deeply: {_over('max_depth', limits)}")]
    if not isinstance(doc, dict):
        return []
    problems = [
        Problem(f"/{key}", f"too many {key}: {len(items)} > {_over(limit, limits)}")
        for key, limit in (("nodes", "max_nodes"), ("edges", "max_edges"))
        if isinstance(items := doc.get(key), list) and len(items) > getattr(limits, limit)
    ]
    if problems:  # the programs below are found by walking nodes and edges
        return problems
    return _program_bound_problems(jq_programs(doc), limits)


def _too_deep(doc: Json, max_depth: int) -> str | None:
    """The pointer of the first value nested deeper than `max_depth`, else None."""
    stack: list[tuple[str, Json, int]] = [("", doc, 0)]
    while stack:
        where, value, depth = stack.pop()
        if depth > max_depth:
            return where
        if isinstance(value, dict):
            stack.extend((f"{where}/{_escape(k)}", v, depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}/{i}", v, depth + 1) for i, v in enumerate(value))
    return None


def _program_bound_problems(programs: Sequence[tuple[str, str]], limits: Limits) -> list[Problem]:
    problems = [
        Problem(
            path,
            f"jq program too long: {size} bytes > {_over('max_expression_bytes', limits)}",
        )
        for path, program in programs
        if (size := len(program.encode("utf-8"))) > limits.max_expression_bytes
    ]
    distinct = len({program for _, program in programs})
    if distinct > limits.max_expressions:
        problems.append(
            Problem("", f"too many jq programs: {distinct} > {_over('max_expressions', limits)}")
        )
    return problems


# --- schema errors, explained ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Explained:
    """A problem, with what it may make redundant: an unknown field suggesting `field`
    explains that `field` is missing from the same object."""

    problem: Problem
    suggests: str | None = None
    missing: str | None = None


def _explained(
    validator: jsonschema.protocols.Validator, instance: Json, prefix: str = ""
) -> list[Problem]:
    """The schema errors of `instance`, each reduced to its first cause and explained,
    sorted by path; a missing field another one misspells is left out (`nodez`
    explains a missing `nodes`)."""
    errors = sorted(validator.iter_errors(instance), key=lambda e: _path_key(e.absolute_path))
    found = [item for error in errors for item in _explain(error, prefix)]
    suggested = {(item.problem.path, item.suggests) for item in found if item.suggests}
    return [
        item.problem
        for item in found
        if item.missing is None or (item.problem.path, item.missing) not in suggested
    ]


def _explain(error: jsonschema.ValidationError, prefix: str) -> list[_Explained]:
    where = prefix + _pointer(error.absolute_path)
    if error.validator == "additionalProperties":
        return list(_unknown_fields(error, where))
    if error.validator in ("anyOf", "oneOf") and error.context:
        cause = _first_cause(error)
        if cause is not None:
            return _explain(cause, prefix)
        return [_Explained(Problem(where, _no_alternative(error)))]
    if error.validator == "required" and isinstance(error.validator_value, list):
        present = error.instance if isinstance(error.instance, dict) else {}
        missing = next((f for f in error.validator_value if f not in present), None)
        return [_Explained(Problem(where, _schema_message(error)), missing=missing)]
    return [_Explained(Problem(where, _schema_message(error)))]


def _unknown_fields(error: jsonschema.ValidationError, where: str) -> Iterator[_Explained]:
    """One problem per unexpected field, with the field it most likely misspells."""
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    allowed = list(schema.get("properties") or {})
    instance = error.instance if isinstance(error.instance, Mapping) else {}
    for key in instance:
        if key in allowed:
            continue
        match = closest(key, allowed)
        if match is not None:
            hint = f"did you mean {match!r}?"
        else:
            hint = f"the fields are {', '.join(allowed)}" if allowed else "no fields are allowed"
        yield _Explained(Problem(where, _bounded(f"{key!r} was unexpected: {hint}")), match)


def _first_cause(error: jsonschema.ValidationError) -> jsonschema.ValidationError | None:
    """The error of the one alternative of an anyOf/oneOf the instance was meant for
    (the only one whose type it has, templates aside), or None when there is no such
    single alternative: then no alternative's error is the cause."""
    alternatives = error.validator_value if isinstance(error.validator_value, list) else []
    meant: set[int] = set()
    for index, alternative in enumerate(alternatives):
        if _is_template(alternative) and not _looks_like_template(error.instance):
            continue
        mismatched = any(
            e.relative_schema_path
            and e.relative_schema_path[0] == index
            and not e.relative_path
            and e.validator == "type"
            for e in error.context or ()
        )
        if not mismatched:
            meant.add(index)
    if len(meant) != 1:
        return None
    (index,) = meant
    candidates = [e for e in error.context or () if e.relative_schema_path[0] == index]
    return min(
        candidates, key=lambda e: (-len(e.relative_path), e.validator == "type"), default=None
    )


def _is_template(schema: Json) -> bool:
    return isinstance(schema, dict) and str(schema.get("$ref", "")).endswith("/template")


def _looks_like_template(value: Json) -> bool:
    return isinstance(value, str) and "{{" in value


def _no_alternative(error: jsonschema.ValidationError) -> str:
    alternatives = error.validator_value if isinstance(error.validator_value, list) else []
    expected = " or ".join(_describe(a) for a in alternatives)
    return _bounded(f"{error.instance!r} is not {expected}" if expected else error.message)


_ARTICLES = {"integer": "an integer", "object": "an object", "array": "an array"}


def _describe(schema: Json) -> str:
    """A few words for what `schema` accepts: "an integer >= 1", "a {{ jq }} template"."""
    if not isinstance(schema, dict):
        return "a value"
    if _is_template(schema):
        return "a {{ jq }} template"
    if "enum" in schema and isinstance(schema["enum"], list):
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    kinds = schema.get("type")
    names = [kinds] if isinstance(kinds, str) else list(kinds or [])
    text = " or ".join(_ARTICLES.get(str(n), f"a {n}") for n in names) or "a value"
    if "minimum" in schema:
        text += f" >= {schema['minimum']}"
    return text


def _pointer_key(pointer: str) -> list[tuple[int, int, str]]:
    return _path_key(int(p) if p.isdigit() else p for p in pointer.split("/")[1:])


def _path_key(parts: Iterable[str | int]) -> list[tuple[int, int, str]]:
    """Sorts array indexes numerically ("/nodes/2" before "/nodes/10")."""
    return [(0, p, "") if isinstance(p, int) else (1, 0, p) for p in parts]


def _schema_message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message, made readable for patterns and bounded in length."""
    message = error.message
    if error.validator == "pattern" and isinstance(error.schema, Mapping):
        if "title" in error.schema:  # what the value should be, in a few words
            message = f"{error.instance!r} is not {error.schema['title']}"
        else:
            message = f"{error.instance!r} is not allowed: {error.schema.get('description', '')}"
    return _bounded(message)


def _bounded(message: str) -> str:
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    return message


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _pointer(parts: Iterable[str | int]) -> str:
    return "".join(f"/{_escape(str(p))}" for p in parts)


@dataclass(frozen=True, slots=True)
class _Graph:
    """What the graph checks can use of a possibly invalid document.

    `ids` maps each node id to the index of its first declaration; `forward` holds
    the forward edges between existing nodes, each with an index into `edge_paths`
    (the edge's JSON Pointer: an entry of /edges, or of a hitl node's
    rejection_path, which implies an edge); `loops` the loop edges between existing
    nodes as (edge index, source, target).
    """

    ids: dict[str, int]
    forward: dict[str, list[tuple[str, int]]]
    loops: list[tuple[int, str, str]]
    edge_paths: list[str]


def _graph(doc: Mapping[str, Json]) -> _Graph:
    ids: dict[str, int] = {}
    for index, node in _items(doc, "nodes"):
        if isinstance(node.get("id"), str):
            ids.setdefault(node["id"], index)
    forward: dict[str, list[tuple[str, int]]] = {node_id: [] for node_id in ids}
    loops: list[tuple[int, str, str]] = []
    edge_paths: list[str] = []
    for index, edge in _items(doc, "edges"):
        source, target = edge.get("from"), edge.get("to")
        if not (isinstance(source, str) and isinstance(target, str)):
            continue
        if source not in ids or target not in ids:
            continue
        if edge.get("loop") is not None:
            loops.append((index, source, target))
        else:
            forward[source].append((target, len(edge_paths)))
            edge_paths.append(f"/edges/{index}")
    for path, source, target in _rejection_entries(doc):
        if source in ids and target in ids and path.startswith(f"/nodes/{ids[source]}/"):
            forward[source].append((target, len(edge_paths)))
            edge_paths.append(path)
    return _Graph(ids, forward, loops, edge_paths)


def _items(doc: Mapping[str, Json], key: str) -> Iterator[tuple[int, dict[str, Json]]]:
    """(index, item) for the object items of list `doc[key]`; others are schema errors."""
    items = doc.get(key)
    if isinstance(items, list):
        for index, item in enumerate(items):
            if isinstance(item, dict):
                yield index, item


# --- human approval (hitl) nodes -------------------------------------------------------

HITL_TYPE = "hitl"
ON_TIMEOUT_DEFAULT = "reject"  # what an approval's timeout means unless config.on_timeout says
# A `{{ jq }}` placeholder in a hitl node's message or payload; it ends at the first "}}".
PLACEHOLDER = re.compile(r"\{\{((?:(?!\}\}).)*)\}\}", re.DOTALL)


def _hitl_configs(doc: Mapping[str, Json]) -> Iterator[tuple[int, str, dict[str, Json]]]:
    """(node index, node id, config) of each hitl node with an object config."""
    for index, node in _items(doc, "nodes"):
        config = node.get("config")
        if node.get("type") == HITL_TYPE and isinstance(config, dict):
            yield index, str(node.get("id")), config


def _rejection_entries(doc: Mapping[str, Json]) -> Iterator[tuple[str, str, str]]:
    """(pointer, hitl node id, target) for each string in a rejection_path."""
    for index, node_id, config in _hitl_configs(doc):
        targets = config.get("rejection_path")
        if isinstance(targets, list):
            for position, target in enumerate(targets):
                if isinstance(target, str):
                    yield f"/nodes/{index}/config/rejection_path/{position}", node_id, target


def template_strings(value: Json, path: str = "") -> Iterator[tuple[str, str]]:
    """(pointer, string) for every string in a message or payload template, in
    document order. Iterative: a payload may nest deeper than the recursion limit."""
    stack: list[tuple[str, Json]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            yield where, item
        elif isinstance(item, dict):
            stack.extend((f"{where}/{_escape(k)}", v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{where}/{i}", v) for i, v in reversed(list(enumerate(item))))


_Check = Callable[[Mapping[str, Json], _Graph, Limits], Iterator[Problem]]


def _duplicate_problems(
    doc: Mapping[str, Json], graph: _Graph, limits: Limits
) -> Iterator[Problem]:
    for index, node in _items(doc, "nodes"):
        node_id = node.get("id")
        if isinstance(node_id, str) and graph.ids[node_id] != index:
            yield Problem(
                f"/nodes/{index}/id",
                f"duplicate node id {node_id!r} (first declared at /nodes/{graph.ids[node_id]})",
            )


def _reference_problems(
    doc: Mapping[str, Json], graph: _Graph, limits: Limits
) -> Iterator[Problem]:
    """Edges and rejection paths naming no node, with the id each most likely misspells.

    A name found in a node without an id (`idd: charge`) is that node's: the schema
    already reports its missing id, and every edge to it would only repeat that."""
    unnamed = _names_in_nodes_without_id(doc)
    for index, edge in _items(doc, "edges"):
        for end in ("from", "to"):
            name = edge.get(end)
            if isinstance(name, str) and name not in graph.ids and name not in unnamed:
                yield Problem(
                    f"/edges/{index}/{end}",
                    f"edge {end} {name!r}: no such node{did_you_mean(name, graph.ids)}",
                )
    for path, _, target in _rejection_entries(doc):
        if target not in graph.ids and target not in unnamed:
            yield Problem(
                path,
                f"rejection_path entry {target!r}: no such node{did_you_mean(target, graph.ids)}",
            )


def _names_in_nodes_without_id(doc: Mapping[str, Json]) -> set[str]:
    return {
        value
        for _, node in _items(doc, "nodes")
        if not isinstance(node.get("id"), str)
        for value in node.values()
        if isinstance(value, str)
    }


def _hitl_problems(doc: Mapping[str, Json], graph: _Graph, limits: Limits) -> Iterator[Problem]:
    """The coordinator's node timeout would fail an approval with the approvers
    never told; the approval's own limit (config.timeout_ms) decides instead."""
    for index, node in _items(doc, "nodes"):
        if node.get("type") == HITL_TYPE and "timeout_ms" in node:
            yield Problem(
                f"/nodes/{index}/timeout_ms",
                "a hitl node has no node timeout: set config.timeout_ms (how long the "
                "approvers have) and config.on_timeout (approve, reject or fail)",
            )


# Headers that carry credentials: a literal value in a definition would be stored in
# the log and shown to every reader of the workflow, in clear.
CREDENTIAL_HEADERS: frozenset[str] = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key"}
)


def credential_header_problem(name: str, value: Json) -> str | None:
    """Why a header `name: value` may not be written in a definition, or None.

    A `{{ }}` template is computed at run time (templates cannot read secrets);
    anything else is a credential written down."""
    if name.lower() not in CREDENTIAL_HEADERS:
        return None
    if isinstance(value, str) and next(placeholders(value), None) is not None:
        return None
    return (
        f"a literal {name} header would be stored and shown in clear: have the operator "
        "bind a secret to this header (AOB_HTTP_SECRETS) and name it in config.secrets"
    )


def _credential_problems(
    doc: Mapping[str, Json], graph: _Graph, limits: Limits
) -> Iterator[Problem]:
    for index, node in _items(doc, "nodes"):
        config = node.get("config")
        headers = config.get("headers") if isinstance(config, dict) else None
        if node.get("type") not in ("http", "agent") or not isinstance(headers, dict):
            continue
        for name, value in headers.items():
            problem = credential_header_problem(name, value)
            if problem is not None:
                yield Problem(f"/nodes/{index}/config/headers/{_escape(name)}", problem)


def _cycle_problems(doc: Mapping[str, Json], graph: _Graph, limits: Limits) -> Iterator[Problem]:
    for component in strongly_connected(list(graph.ids), graph.forward):
        start = min(component, key=graph.ids.__getitem__)
        cycle = shortest_cycle(start, graph.forward)
        if cycle is not None:
            nodes, closing_edge = cycle
            path = graph.edge_paths[closing_edge]
            if path.startswith("/edges/"):
                hint = "declare the back-edge with loop: {max_iterations: N}"
            else:
                hint = "a rejection_path leads downstream; go back with a loop edge instead"
            yield Problem(
                path,
                f"undeclared cycle {' -> '.join(nodes)}: forward edges must not form a "
                f"cycle; {hint}",
            )


def _loop_problems(doc: Mapping[str, Json], graph: _Graph, limits: Limits) -> Iterator[Problem]:
    for index, source, target in graph.loops:
        if source not in reachable(target, graph.forward):
            yield Problem(
                f"/edges/{index}",
                f"loop edge {source} -> {target}: {target!r} does not reach {source!r} "
                "through forward edges, so the loop has no body",
            )


def jq_programs(doc: Mapping[str, Json]) -> list[tuple[str, str]]:
    """(pointer, program) for every jq program of a definition: the run's output,
    edge conditions, transform expressions and hitl placeholders (non-empty ones:
    the schema reports an empty string; an empty placeholder is a jq problem)."""
    found: list[tuple[str, Json]] = [("/output", doc.get("output"))]
    found += [(f"/edges/{i}/when", edge.get("when")) for i, edge in _items(doc, "edges")]
    for index, node in _items(doc, "nodes"):
        config = node.get("config")
        if node.get("type") == "transform" and isinstance(config, dict):
            found.append((f"/nodes/{index}/config/expr", config.get("expr")))
    programs = [(path, program) for path, program in found if isinstance(program, str) and program]
    for index, _, config in _hitl_configs(doc):
        for key in ("message", "payload"):
            for path, text in template_strings(config.get(key), f"/nodes/{index}/config/{key}"):
                programs += [(path, program) for program in placeholders(text)]
    return programs


def placeholders(text: str) -> Iterator[str]:
    """The programs of `{{ jq }}` placeholders in `text`, as PLACEHOLDER finds them,
    in linear time (the regex rescans to the end from every unclosed "{{")."""
    start = text.find("{{")
    while start >= 0:
        end = text.find("}}", start + 2)
        if end < 0:
            return
        yield text[start + 2 : end]
        start = text.find("{{", end + 2)


def _expression_problems(
    doc: Mapping[str, Json], graph: _Graph, limits: Limits
) -> Iterator[Problem]:
    for path, program in jq_programs(doc):
        try:
            compile_jq(program)
        except ExpressionError as error:
            yield Problem(path, f"invalid jq expression: {error.message}")


# Without a list of nodes, only the programs can be checked (see `_problems`).
_NODELESS_CHECKS: tuple[_Check, ...] = (_expression_problems,)
_SEMANTIC_CHECKS: tuple[_Check, ...] = (
    _credential_problems,
    _duplicate_problems,
    _reference_problems,
    _hitl_problems,
    _cycle_problems,
    _loop_problems,
    _expression_problems,
)
