"""Tools agents can find and use: composite tools and OpenAPI documents.

The catalog is a projection of the `aob.tools` topic (`ToolRegistered` events; the
latest registration of a name within a tenant wins), held in memory: every process
that needs it folds the topic from offset 0 (`follow`), so it needs no database.
Every tool belongs to one tenant (its registrant's; none recorded: the default
tenant), and every lookup names the tenant it looks in: one tenant's tools are
invisible to another's callers and agents.

- A composite tool (kind "pipeline") is a named, reusable pipeline: `steps` (see
  `pipeline`) and an optional JSON Schema `parameters` for its input.
- An OpenAPI document (kind "openapi") is `{"document": {...}, "base_url"?: url}`;
  agents call its operations by operation id (`openapi`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aob.events.codec import decode
from aob.events.log.port import Append, EventLog, Record, TopicPartition
from aob.events.types import TOOLS_TOPIC, Json, ToolRegistered
from aob.projections.readmodels.views import DEFAULT_TENANT
from aob.projections.runtime.deadletter import dead_letter, describe
from aob.projections.workflow.definition import credential_header_problem
from aob.workers.agent.pipeline import PipelineError, check_steps
from aob.workers.agent.schemas import SchemaRefused, check_document, check_schema

CATALOG_SERVICE = "aob-tool-catalog"  # names the catalog's dead letters and its group

KINDS = ("pipeline", "openapi")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_WORD = re.compile(r"[a-z0-9]+")
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class InvalidTool(ValueError):
    """A registration that cannot be used; the message says why."""


def check_registration(name: str, kind: str, spec: Json) -> None:
    """Refuse a tool registration agents could not use. Raises InvalidTool."""
    if not _NAME.fullmatch(name):
        raise InvalidTool("name: 1-64 characters from A-Z, a-z, 0-9, '_', '.' and '-'")
    if kind not in KINDS:
        raise InvalidTool(f"kind: one of {', '.join(KINDS)}")
    if not isinstance(spec, dict):
        raise InvalidTool("spec must be an object")
    if kind == "pipeline":
        try:  # what a run would refuse: too many steps, unknown ops (20,000 were taken)
            steps = check_steps(spec.get("steps"))
        except PipelineError as error:
            raise InvalidTool(f"spec.steps: {error}") from None
        _check_step_headers(steps)
        parameters = spec.get("parameters")
        if parameters is not None:
            try:  # offline: a reference outside the schema is refused, never fetched
                check_schema(parameters, "spec.parameters")
            except SchemaRefused as refused:
                raise InvalidTool(str(refused)) from None
        return
    document = spec.get("document")
    if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
        raise InvalidTool("spec.document must be an OpenAPI document with paths")
    try:  # its schemas are validated against it: references inside, regexes for RE2
        check_document(document, "spec.document")
    except SchemaRefused as refused:
        raise InvalidTool(str(refused)) from None
    if not list(operations(document)):
        raise InvalidTool("spec.document has no operation with an operationId")
    base_url = spec.get("base_url", server_url(document))
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise InvalidTool("give spec.base_url (http or https), or servers[0].url in the document")


def _check_step_headers(steps: list[dict[str, Any]]) -> None:
    """A credential header written into a step would be stored and listed in clear."""
    for index, step in enumerate(steps):
        headers = step.get("headers")
        for name, value in headers.items() if isinstance(headers, dict) else ():
            problem = credential_header_problem(str(name), value)
            if problem is not None:
                raise InvalidTool(f"spec.steps[{index}].headers.{name}: {problem}")


@dataclass(frozen=True, slots=True)
class Operation:
    operation_id: str
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def summary(self) -> str:
        text = self.spec.get("summary") or self.spec.get("description") or ""
        return str(text)


def operations(document: dict[str, Any]) -> Iterator[Operation]:
    """Every operation of `document` that has an operationId."""
    paths = document.get("paths")
    for path, item in paths.items() if isinstance(paths, dict) else ():
        if not isinstance(item, dict):
            continue
        for method in HTTP_METHODS:
            spec = item.get(method)
            if isinstance(spec, dict) and isinstance(spec.get("operationId"), str):
                shared = item.get("parameters", [])
                merged = {**spec, "parameters": _merge_parameters(shared, spec.get("parameters"))}
                yield Operation(spec["operationId"], method.upper(), path, merged)


def _merge_parameters(shared: Any, own: Any) -> list[Any]:
    """Path-level parameters apply unless the operation redefines (name, in)."""
    own_list = own if isinstance(own, list) else []
    keys = {(p.get("name"), p.get("in")) for p in own_list if isinstance(p, dict)}
    inherited = [
        p
        for p in (shared if isinstance(shared, list) else [])
        if isinstance(p, dict) and (p.get("name"), p.get("in")) not in keys
    ]
    return inherited + own_list


def server_url(document: dict[str, Any]) -> str | None:
    servers = document.get("servers")
    if isinstance(servers, list) and servers and isinstance(servers[0], dict):
        url = servers[0].get("url")
        return url if isinstance(url, str) else None
    return None


def tool_tenant(tool: ToolRegistered) -> str:
    """The tenant a registration belongs to (none recorded: the default tenant)."""
    return tool.tenant or DEFAULT_TENANT


def tool_key(name: str, tenant: str | None) -> str:
    """The `aob.tools` record key: the name, qualified by a tenant other than the default
    (so that two tenants' tools of one name never share a key)."""
    tenant = tenant or DEFAULT_TENANT
    return name if tenant == DEFAULT_TENANT else f"{tenant}/{name}"


@dataclass
class ToolCatalog:
    """The registered tools, by (tenant, name); fed `ToolRegistered` events in log order."""

    tools: dict[tuple[str, str], ToolRegistered] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)  # partition -> next offset
    # One reader at a time: two could apply an old registration after a newer one.
    _reading: asyncio.Lock = field(default_factory=asyncio.Lock)

    def apply(self, event: ToolRegistered) -> None:
        self.tools[(tool_tenant(event), event.name)] = event

    def of_tenant(self, tenant: str | None) -> list[ToolRegistered]:
        """`tenant`'s tools (None: the default tenant's), by name."""
        tenant = tenant or DEFAULT_TENANT
        return sorted(
            (t for (owner, _), t in self.tools.items() if owner == tenant), key=lambda t: t.name
        )

    def get(
        self, name: str, kind: str | None = None, *, tenant: str | None
    ) -> ToolRegistered | None:
        """`tenant`'s tool `name` (None: the default tenant's); another tenant's is None."""
        tool = self.tools.get((tenant or DEFAULT_TENANT, name))
        if tool is None or (kind is not None and tool.kind != kind):
            return None
        return tool

    def search(self, query: str, limit: int = 10, *, tenant: str | None) -> list[dict[str, Any]]:
        """`tenant`'s composite tools and OpenAPI operations that match `query`'s words,
        best first."""
        words = set(_WORD.findall(query.lower()))
        scored: list[tuple[int, str, dict[str, Any]]] = []
        for tool in self.of_tenant(tenant):
            for entry in _entries(tool):
                text = " ".join(str(v) for v in entry.values() if isinstance(v, str)).lower()
                score = sum(1 for word in words if word in text) if words else 1
                if score:
                    scored.append((-score, entry["name"], entry))
        scored.sort(key=lambda item: (item[0], item[1]))
        return [entry for _, _, entry in scored[:limit]]

    async def follow(self, log: EventLog, stop: asyncio.Event, *, interval: float = 0.5) -> None:
        """Fold `aob.tools` from where this catalog stands until `stop` is set."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if await self.catch_up(log):
                    continue
                appended = asyncio.ensure_future(log.wait_for_append(interval, (TOOLS_TOPIC,)))
                await asyncio.wait({stopping, appended}, return_when=asyncio.FIRST_COMPLETED)
                appended.cancel()
        finally:
            stopping.cancel()

    async def catch_up(self, log: EventLog) -> bool:
        """Read what is new on `aob.tools`; True when something was read."""
        async with self._reading:
            return await self._read_new(log)

    async def _read_new(self, log: EventLog) -> bool:
        read = False
        poison: list[tuple[Record, str]] = []
        for partition in range(await log.partitions(TOOLS_TOPIC)):
            offset = self.positions.get(partition, 0)
            for record in await log.read(TOOLS_TOPIC, partition, offset):
                self.positions[partition] = record.offset + 1
                read = True
                try:
                    payload = decode(record.value).payload
                    if isinstance(payload, ToolRegistered):
                        self.apply(payload)
                except Exception as error:  # poison: set aside, the catalog goes on
                    poison.append((record, describe(error)))
        if poison:
            await set_aside(log, poison)
        return read


async def set_aside(log: EventLog, poison: list[tuple[Record, str]]) -> None:
    """Dead-letter each poison record once. Every catalog folds `aob.tools` from offset
    0 at each start, so the catalog group's committed offsets mark what is already set
    aside: the dead letters and the commit past them go in one step, and a restarted
    (or another) catalog passes over the records below it. (Two catalogs meeting new
    poison at the same moment may both write: the same ids, listed once.)"""
    done = await log.committed(CATALOG_SERVICE, TOOLS_TOPIC)
    new = [(r, why) for r, why in poison if r.offset >= done.get(r.partition, 0)]
    if not new:
        return
    letters: list[Append] = []
    past: dict[TopicPartition, int] = {}
    for record, why in new:
        letters += dead_letter(record, CATALOG_SERVICE, why, fail_run=False)
        past[record.position] = max(past.get(record.position, 0), record.offset + 1)
    await log.append_and_commit(letters, CATALOG_SERVICE, past)


def _entries(tool: ToolRegistered) -> Iterator[dict[str, Any]]:
    spec = tool.spec if isinstance(tool.spec, dict) else {}
    if tool.kind == "pipeline":
        yield {
            "kind": "composite_tool",
            "name": tool.name,
            "description": tool.description,
            "parameters": spec.get("parameters"),
            "use": f'execute_pipeline with {{"tool": "{tool.name}", "input": ...}}',
        }
        return
    document = spec.get("document")
    for operation in operations(document if isinstance(document, dict) else {}):
        yield {
            "kind": "openapi_operation",
            "name": f"{tool.name}.{operation.operation_id}",
            "api": tool.name,
            "operation_id": operation.operation_id,
            "description": f"{operation.method} {operation.path} {operation.summary}".strip(),
            "parameters": [
                {k: p.get(k) for k in ("name", "in", "required", "schema") if k in p}
                for p in operation.spec.get("parameters", [])
                if isinstance(p, dict)
            ],
            "has_body": "requestBody" in operation.spec,
            "use": f'openapi_action with {{"api": "{tool.name}", '
            f'"operation_id": "{operation.operation_id}", "arguments": {{...}}}}',
        }
