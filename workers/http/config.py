"""An `http` node's config: templates rendered, then validated into a `RequestSpec`.

Config fields (only `url` is required):

    method            GET (default), HEAD, POST, PUT, PATCH, DELETE or OPTIONS
    url               http or https URL
    headers           {name: value}; Host, framing headers and Idempotency-Key
                      are the worker's (a node naming one is refused)
    query             {name: scalar or list of scalars}, appended to the URL's query
    body              any JSON value: a string is sent as text, anything else as JSON
    body_format       "json" or "text" to override that choice
    timeout_ms        time allowed for one request, redirects included
    retries           n, or {"max": n, "backoff_ms": 200, "max_backoff_ms": 10000,
                      "non_idempotent": false}: attempts after the first (see worker)
    max_response_bytes   a larger response body fails the node
    expect_status     [200, "2xx", ...]; default ["2xx"]. Others fail the node.
    follow_redirects  true (default): up to the worker's limit, each hop re-judged
    secrets           ["github", ...]: secrets the operator bound (AOB_HTTP_SECRETS);
                      each is sent in its bound header, only to its bound hosts

Templates. Any string in the config may embed jq programs as `{{ program }}`. They run
in the jq sandbox (`aob.workers.sandbox`, under its CPU, memory and output budgets) over
the node's context {"inputs": ..., "nodes": {id: output}, "iteration": n}.
A string that is exactly one `{{ ... }}` takes the program's value as is (an object, a
number, ...); otherwise each `{{ ... }}` is replaced by its value as text (strings as
they are, null as "", anything else as compact JSON). Write a literal "{{" as
`{{ "{{" }}`. Templates cannot read secrets: a template naming `.secrets` is refused,
and a node asks for a secret by name in `secrets` instead (see `secrets.py`).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from aob.events.types import Json
from aob.projections.workflow.expressions import ExpressionError
from aob.workers.http.settings import HttpWorkerSettings
from aob.workers.sandbox import JqBudgetExceeded, JqSandboxBusy, jq_first

USER_AGENT = "aob-http-worker"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# The worker owns these: Host must name the host the guard judged, framing is httpx's, and
# the idempotency key is derived from the task (see `idempotency`), never the node's.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "idempotency-key",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "proxy-connection",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_STATUS_CLASS = re.compile(r"[1-5]xx")
# `.secrets`, `."secrets"`, `.["secrets"]` at the root of a path (not `.inputs.secrets`).
_SECRETS_PATH = re.compile(r"""(?<![\w\])}"?])\.\s*(\[\s*)?"?secrets\b""")


class ConfigError(ValueError):
    """The node's config is invalid (or a template failed): retrying cannot help."""


class BudgetError(ConfigError):
    """A template exceeded a jq sandbox budget (the message names it): final."""


class SandboxBusy(Exception):
    """The jq sandbox had no room for a template: a later attempt can succeed."""


class _Retries(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    max: int = Field(default=0, ge=0)
    backoff_ms: int = Field(default=200, ge=0)
    max_backoff_ms: int = Field(default=10_000, ge=0)
    non_idempotent: bool = False


Scalar = str | int | float | bool


class _NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    method: str = "GET"
    url: str
    headers: dict[str, str] = {}
    query: dict[str, Scalar | list[Scalar] | None] = {}
    body: JsonValue = None
    body_format: Literal["json", "text"] | None = None
    timeout_ms: int | None = Field(default=None, ge=1)
    retries: int | _Retries = 0
    max_response_bytes: int | None = Field(default=None, ge=0)
    expect_status: list[int | str] = ["2xx"]
    follow_redirects: bool = True
    secrets: list[str] = []


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 0
    backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    non_idempotent: bool = False


@dataclass(frozen=True, slots=True)
class StatusMatcher:
    codes: frozenset[int]
    classes: frozenset[int]  # 2 for "2xx"

    def __contains__(self, status: int) -> bool:
        return status in self.codes or status // 100 in self.classes

    def __str__(self) -> str:
        return ", ".join([*map(str, sorted(self.codes)), *(f"{c}xx" for c in sorted(self.classes))])


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One http node's request, rendered and validated."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    timeout_s: float
    retry: RetryPolicy
    max_response_bytes: int
    expect: StatusMatcher
    follow_redirects: bool
    secrets: tuple[str, ...] = ()  # names only: values are added by the transport

    @property
    def retry_after_sending(self) -> bool:
        """Whether a request that may have reached the server can be sent again."""
        return self.method in IDEMPOTENT_METHODS or self.retry.non_idempotent


async def render(value: Json, context: Json, where: str = "config") -> Json:
    """`value` with every `{{ jq }}` template evaluated over `context` in the jq
    sandbox. Raises ConfigError (BudgetError when a sandbox budget was exceeded) or
    SandboxBusy."""
    if isinstance(value, str):
        return await _render_text(value, context, where)
    if isinstance(value, list):
        return [await render(item, context, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: await render(item, context, f"{where}.{key}") for key, item in value.items()}
    return value


async def _render_text(text: str, context: Json, where: str) -> Json:
    matches = list(_TEMPLATE.finditer(text))
    if not matches:
        return text
    if len(matches) == 1 and matches[0].span() == (0, len(text)):
        return await _evaluate(matches[0].group(1), context, where)
    parts: list[str] = []
    end = 0
    for match in matches:
        result = await _evaluate(match.group(1), context, where)
        parts.append(text[end : match.start()])
        if result is not None:
            as_json = json.dumps(result, separators=(",", ":"))
            parts.append(result if isinstance(result, str) else as_json)
        end = match.end()
    parts.append(text[end:])
    return "".join(parts)


async def _evaluate(program: str, context: Json, where: str) -> Json:
    try:
        return await jq_first(program.strip(), context)
    except JqBudgetExceeded as error:
        raise BudgetError(f"{where}: template {{{{{program}}}}}: {error.message}") from None
    except JqSandboxBusy as error:
        raise SandboxBusy(f"{where}: template not evaluated: {error.message}") from None
    except ExpressionError as error:
        raise ConfigError(f"{where}: template {{{{{program}}}}}: {error.message}") from None


async def build_request(config: Json, context: Json, settings: HttpWorkerSettings) -> RequestSpec:
    """Render `config`'s templates over `context` and validate it. Raises ConfigError."""
    if not isinstance(config, dict):
        raise ConfigError("http node needs a config object with at least a url")
    refuse_secret_templates(config)
    try:
        node = _NodeConfig.model_validate(await render(config, context))
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
    method = node.method.upper()
    if method not in METHODS:
        allowed = ", ".join(sorted(METHODS))
        raise ConfigError(f"config.method: {node.method!r} is not one of {allowed}")
    headers, body = _headers(node.headers), _body(node)
    if body is not None and not any(name.lower() == "content-type" for name, _ in headers):
        kind = "application/json" if _is_json_body(node) else "text/plain; charset=utf-8"
        headers.append(("content-type", kind))
    names = {name.lower() for name, _ in headers}
    if "accept-encoding" not in names:
        # No compression unless asked: max_response_bytes then bounds what is read.
        headers.append(("accept-encoding", "identity"))
    if "user-agent" not in names:
        headers.append(("user-agent", USER_AGENT))
    return RequestSpec(
        method=method,
        url=_with_query(node.url, node.query),
        headers=tuple(headers),
        body=body,
        timeout_s=_bounded(
            node.timeout_ms, settings.timeout_ms, settings.max_timeout_ms, "timeout_ms"
        )
        / 1000,
        retry=_retry_policy(node.retries, settings),
        max_response_bytes=_bounded(
            node.max_response_bytes,
            settings.max_response_bytes,
            settings.max_response_bytes,
            "max_response_bytes",
        ),
        expect=_status_matcher(node.expect_status),
        follow_redirects=node.follow_redirects,
        secrets=tuple(node.secrets),
    )


def refuse_secret_templates(value: Json, where: str = "config") -> None:
    """Raises ConfigError when a template names `.secrets`: secrets are not data."""
    if isinstance(value, str):
        for match in _TEMPLATE.finditer(value):
            if _SECRETS_PATH.search(match.group(1)):
                raise ConfigError(
                    f"{where}: templates cannot read secrets (.secrets): the operator binds"
                    " each secret to a header and hosts (AOB_HTTP_SECRETS), and the node"
                    ' names it in config.secrets, e.g. "secrets": ["github"]'
                )
    elif isinstance(value, list):
        for i, item in enumerate(value):
            refuse_secret_templates(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_secret_templates(item, f"{where}.{key}")


def _describe(error: ValidationError) -> str:
    """pydantic's errors without the offending input (it may hold a secret)."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in ("config", *item["loc"]))
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


def _headers(raw: dict[str, str]) -> list[tuple[str, str]]:
    headers = []
    for name, value in raw.items():
        if not _TOKEN.fullmatch(name):
            raise ConfigError(f"config.headers: {name!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise ConfigError(f"config.headers: {name} is set by the worker, not the node")
        if any(c in value for c in "\r\n\0"):
            raise ConfigError(f"config.headers.{name}: line breaks are not allowed")
        if not value.isascii():
            raise ConfigError(f"config.headers.{name}: only ASCII is allowed (encode the value)")
        headers.append((name, value))
    return headers


def _is_json_body(node: _NodeConfig) -> bool:
    if node.body_format is None:
        return not isinstance(node.body, str)
    return node.body_format == "json"


def _body(node: _NodeConfig) -> bytes | None:
    if node.body is None:
        return None
    if _is_json_body(node):
        return json.dumps(node.body, separators=(",", ":")).encode()
    if not isinstance(node.body, str):
        raise ConfigError("config.body: body_format text needs a string body")
    return node.body.encode()


def _with_query(url: str, query: dict[str, Any]) -> str:
    pairs = [
        (name, _query_text(value))
        for name, values in query.items()
        if values is not None
        for value in (values if isinstance(values, list) else [values])
    ]
    url = url.partition("#")[0]  # a fragment is never sent
    if not pairs:
        return url
    joiner = "" if url.endswith(("?", "&")) else "&" if "?" in url else "?"
    return url + joiner + urllib.parse.urlencode(pairs)


def _query_text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bounded(value: int | None, default: int, limit: int, name: str) -> int:
    if value is None:
        return min(default, limit)
    if value > limit:
        raise ConfigError(f"config.{name}: {value} exceeds the worker's limit of {limit}")
    return value


def _retry_policy(retries: int | _Retries, settings: HttpWorkerSettings) -> RetryPolicy:
    spec = retries if isinstance(retries, _Retries) else _Retries(max=retries)
    if not 0 <= spec.max <= settings.max_retries:
        raise ConfigError(f"config.retries: between 0 and {settings.max_retries}, not {spec.max}")
    return RetryPolicy(
        spec.max, spec.backoff_ms / 1000, spec.max_backoff_ms / 1000, spec.non_idempotent
    )


def _status_matcher(expected: list[int | str]) -> StatusMatcher:
    codes, classes = set(), set()
    for item in expected:
        if isinstance(item, int) and 100 <= item <= 599:
            codes.add(item)
        elif isinstance(item, str) and _STATUS_CLASS.fullmatch(item.lower()):
            classes.add(int(item[0]))
        elif isinstance(item, str) and item.isdigit() and 100 <= int(item) <= 599:
            codes.add(int(item))
        else:
            raise ConfigError(f"config.expect_status: {item!r} is not a status or a class like 2xx")
    if not codes and not classes:
        raise ConfigError("config.expect_status: name at least one status")
    return StatusMatcher(frozenset(codes), frozenset(classes))
