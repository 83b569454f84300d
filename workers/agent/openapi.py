"""`openapi_action`: one operation of a registered OpenAPI document, arguments checked.

Arguments are flat: each parameter by name (path, query and header parameters),
plus `body` for the request body. They are checked against the document before
any request: unknown names, missing required parameters and values that break a
parameter's or the body's schema are refused with a message saying which.
Schemas are checked with the document as their root, so `#/components/...`
references resolve.
"""

from __future__ import annotations

import itertools
import urllib.parse
from typing import Any

from aob.events.types import Json
from aob.workers.agent.catalog import Operation, operations, server_url
from aob.workers.agent.schemas import schema_errors


class ArgumentError(ValueError):
    """The arguments do not fit the operation; the message lists every problem."""


def find_operation(document: dict[str, Any], operation_id: str) -> Operation:
    found = {op.operation_id: op for op in operations(document)}
    operation = found.get(operation_id)
    if operation is None:
        known = ", ".join(sorted(found)) or "none"
        raise ArgumentError(f"no operation {operation_id!r}; operations: {known}")
    return operation


def build_request(spec: dict[str, Any], operation_id: str, arguments: Json) -> dict[str, Json]:
    """The HTTP request calling `operation_id` with `arguments`; raises ArgumentError."""
    document: dict[str, Any] = spec["document"]
    operation = find_operation(document, operation_id)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ArgumentError("arguments must be an object: parameters by name, and body")
    problems: list[str] = []
    parameters = [_resolve(document, p) for p in operation.spec.get("parameters", [])]
    by_name = {p["name"]: p for p in parameters if isinstance(p.get("name"), str)}
    body_spec = _resolve(document, operation.spec.get("requestBody"))
    for name in arguments:
        if name not in by_name and not (name == "body" and body_spec):
            allowed = ", ".join([*by_name, *(["body"] if body_spec else [])]) or "none"
            problems.append(f"unknown argument {name!r} (this operation takes: {allowed})")
    path, query, headers = operation.path, {}, {}
    for name, parameter in by_name.items():
        if name not in arguments:
            if parameter.get("required") or parameter.get("in") == "path":
                problems.append(f"missing required {parameter.get('in')} parameter {name!r}")
            continue
        value = arguments[name]
        problems += _schema_problems(document, parameter.get("schema"), value, name)
        where = parameter.get("in")
        if where == "path":
            path = path.replace("{" + name + "}", urllib.parse.quote(_text(value), safe=""))
        elif where == "query":
            query[name] = value
        elif where == "header":
            headers[name] = _text(value)
        else:
            problems.append(f"parameter {name!r}: {where!r} parameters are not supported")
    body = arguments.get("body")
    if body_spec:
        if body is None and body_spec.get("required"):
            problems.append("missing the required request body ('body')")
        elif body is not None:
            schema = _json_schema(body_spec)
            problems += _schema_problems(document, schema, body, "body")
    if problems:
        raise ArgumentError("; ".join(problems))
    base = str(spec.get("base_url") or server_url(document) or "").rstrip("/")
    request: dict[str, Json] = {"method": operation.method, "url": base + path}
    if query:
        request["query"] = query
    if headers:
        request["headers"] = headers
    if body is not None:
        request["body"] = body
    return request


def _resolve(document: dict[str, Any], item: Any) -> dict[str, Any]:
    """`item`, following a local `$ref` (parameters and request bodies may be references)."""
    for _ in range(10):
        if not (isinstance(item, dict) and isinstance(item.get("$ref"), str)):
            break
        ref: str = item["$ref"]
        if not ref.startswith("#/"):
            return {}
        target: Any = document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        item = target
    return item if isinstance(item, dict) else {}


def _json_schema(body_spec: dict[str, Any]) -> Any:
    content = body_spec.get("content")
    if not isinstance(content, dict):
        return None
    for media, entry in content.items():
        if "json" in media and isinstance(entry, dict):
            return entry.get("schema")
    return None


def _schema_problems(document: dict[str, Any], schema: Any, value: Json, name: str) -> list[str]:
    if not isinstance(schema, dict):
        return []
    root = {**document, **schema}  # the document as root: #/components/... resolves
    # Offline (nothing fetched), regexes on RE2.
    return [
        f"{name}{''.join(f'[{p!r}]' for p in path)}: {message}"
        for path, message in itertools.islice(schema_errors(root, value), 10)
    ]


def _text(value: Json) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
