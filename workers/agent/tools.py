"""The five tools, as one node attempt uses them.

Tool errors the model can act on (a failed pipeline step, a rejected patch, bad
arguments) go back to it as the tool's result. Running out of a bound (patch
attempts) raises `AgentFailure`, which fails the node with the reason.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aob.events.codec import encode
from aob.events.log.port import Append, EventLog
from aob.events.types import (
    RUNS_TOPIC,
    Event,
    Json,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    PatchApplied,
    PatchProposed,
    PatchRejected,
    PatchReviewRequested,
    task_topic,
)
from aob.projections.readmodels.views import DEFAULT_TENANT
from aob.projections.workflow.materialize import apply_patch
from aob.workers.agent.budget_guard import BudgetGuard
from aob.workers.agent.catalog import ToolCatalog
from aob.workers.agent.config import AgentConfig, AgentDefaults
from aob.workers.agent.openapi import ArgumentError, build_request
from aob.workers.agent.pipeline import Fetch, PipelineError, StepError, run_pipeline
from aob.workers.agent.run_events import agent_event
from aob.workers.agent.schemas import problems as schema_problems
from aob.workers.agent.watch import RunFinished, run_position, wait_for_run_event
from aob.workers.host import NodeError
from aob.workers.http.guard import Blocked
from aob.workers.http.worker import HttpWorker

Definitions = Callable[[str], Awaitable[dict[str, Any] | None]]
# A run's tenant by run id; None while the run is unknown (not projected yet).
RunTenants = Callable[[str], Awaitable[str | None]]


class AgentFailure(NodeError):
    """A bound was reached: the node fails, without retries."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class GuardedFetch:
    """Outbound HTTP for agents through the HTTP worker: the same SSRF guard, pinned
    connections, redirect re-checks, size limits. The worker given should hold no
    secrets: agents' requests are written by a model.

    Values reach the worker's config through its context as whole `{{ }}` templates,
    which take values as they are: nothing the model wrote is ever read as a template.
    """

    def __init__(self, worker: HttpWorker, origin: NodeScheduled | None = None) -> None:
        self.worker = worker
        self.origin = origin
        self.calls = 0

    def for_task(self, origin: NodeScheduled) -> GuardedFetch:
        """The fetch of one agent attempt: its requests' Idempotency-Keys are those of
        (run, node, iteration, attempt, n-th request), the same when a redelivered
        attempt makes its calls again, and never one shared by two calls."""
        return GuardedFetch(self.worker, origin)

    async def __call__(self, request: Mapping[str, Json]) -> dict[str, Json]:
        config = {key: f"{{{{ .request.{key} }}}}" for key in request}
        context = {"request": dict(request)}
        self.calls += 1
        origin = self.origin
        run_id, node_id, iteration, attempt = (
            (origin.run_id, origin.node_id, origin.iteration, origin.attempt)
            if origin is not None
            else ("agent", "", 0, 1)
        )
        node = f"{node_id}/request/{self.calls}"  # the key's (run, node, ...) parts
        task = NodeScheduled(run_id, node, "http", iteration, attempt, config, context)
        try:
            output = await self.worker.handle(task)
        except NodeError as error:
            raise StepError(str(error)) from None
        except Blocked as error:  # the worker reports it as NodeError; kept for safety
            raise StepError(str(error)) from None
        return output if isinstance(output, dict) else {"status": None, "body": output}

    async def aclose(self) -> None:
        await self.worker.aclose()


@dataclass
class AgentServices:
    """What every agent node shares."""

    log: EventLog
    defaults: AgentDefaults
    catalog: ToolCatalog
    fetch: Fetch | None = None
    definitions: Definitions | None = None
    # Where agents learn their run's tenant, whose tools alone they see; without
    # it (one tenant only) every run is the default tenant's.
    run_tenants: RunTenants | None = None
    # Enforces run and tenant budgets around every LLM call; None: no budgets.
    budgets: BudgetGuard | None = None


@dataclass
class ToolBox:
    """The tools of one node attempt, with what that attempt did with them."""

    services: AgentServices
    task: NodeScheduled
    config: AgentConfig
    deadline: float  # loop time
    patch_failures: int = 0
    patches: list[dict[str, Json]] = field(default_factory=list)
    delegations: int = 0
    _definition: dict[str, Any] | None = None
    _tenant: str | None = None
    _fetch: Fetch | None = None

    @property
    def fetch(self) -> Fetch | None:
        """Outbound HTTP for this attempt's tools (numbered requests, see GuardedFetch)."""
        if self._fetch is None and self.services.fetch is not None:
            bind = getattr(self.services.fetch, "for_task", None)
            self._fetch = bind(self.task) if bind is not None else self.services.fetch
        return self._fetch

    @property
    def available(self) -> list[str]:
        tools = list(self.config.tools)
        if self.config.delegation_depth >= self.services.defaults.max_delegation_depth:
            tools = [t for t in tools if t != "delegate_to_agent"]
        if self.config.delegation_depth > 0:  # a delegate is no node of the workflow
            tools = [t for t in tools if t != "patch_workflow"]
        return tools

    async def call(self, name: str, arguments: str) -> str:
        """The tool's result as JSON text for the model."""
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as error:
            return _result({"error": f"arguments are not valid JSON: {error}"})
        if not isinstance(args, dict):
            return _result({"error": "arguments must be a JSON object"})
        if name not in self.available:
            allowed = ", ".join(self.available) or "none"
            return _result({"error": f"tool {name!r} is not available here (available: {allowed})"})
        handler = getattr(self, "_" + name)
        result: dict[str, Json] = await handler(args)
        return _result(result, self.services.defaults.max_tool_result_chars)

    def _remaining(self) -> float:
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    async def tenant(self) -> str | None:
        """The run's tenant, whose catalog tools alone this node sees; None while it
        is unknown (then no catalog tool is visible: never another tenant's)."""
        if self._tenant is None:
            if self.services.run_tenants is None:
                self._tenant = DEFAULT_TENANT
            else:
                self._tenant = await self.services.run_tenants(self.task.run_id)
        return self._tenant

    # --- execute_pipeline ----------------------------------------------------------

    async def _execute_pipeline(self, args: dict[str, Any]) -> dict[str, Json]:
        steps = args.get("steps")
        if "tool" in args:
            name, tenant = args["tool"], await self.tenant()
            tool = (
                self.services.catalog.get(name, "pipeline", tenant=tenant)
                if isinstance(name, str) and tenant is not None
                else None
            )
            if tool is None:
                return {"error": f"no composite tool {name!r}; find one with search_tools"}
            steps = tool.spec.get("steps")
            problem = _input_problem(tool.spec.get("parameters"), args.get("input"))
            if problem:
                return {"error": f"input of composite tool {name!r}: {problem}"}
        data = args.get("input", self.task.input)  # default: what the node receives
        try:
            result = await run_pipeline(steps, data, fetch=self.fetch)
        except PipelineError as error:
            return {"error": str(error), "failed_step": error.index}
        return {"result": result}

    # --- search_tools ---------------------------------------------------------------

    async def _search_tools(self, args: dict[str, Any]) -> dict[str, Json]:
        query = args.get("query")
        if not isinstance(query, str):
            return {"error": "query must be a string of keywords"}
        tenant = await self.tenant()
        if tenant is None:
            return {"error": "the run's tools cannot be looked up yet; try again"}
        return {"results": self.services.catalog.search(query, tenant=tenant)}

    # --- openapi_action -------------------------------------------------------------

    async def _openapi_action(self, args: dict[str, Any]) -> dict[str, Json]:
        api, operation_id = args.get("api"), args.get("operation_id")
        tenant = await self.tenant()
        tool = (
            self.services.catalog.get(api, "openapi", tenant=tenant)
            if isinstance(api, str) and tenant is not None
            else None
        )
        if tool is None:
            return {"error": f"no OpenAPI document {api!r}; find operations with search_tools"}
        if not isinstance(operation_id, str):
            return {"error": "operation_id must be a string"}
        try:
            request = build_request(tool.spec, operation_id, args.get("arguments"))
        except ArgumentError as error:
            return {"error": f"arguments of {api}.{operation_id}: {error}"}
        fetch = self.fetch
        if fetch is None:
            return {"error": "outbound HTTP is not available to this agent"}
        try:
            response = await fetch(request)
        except StepError as error:
            return {"error": str(error)}
        return {"status": response.get("status"), "body": response.get("body")}

    # --- patch_workflow -------------------------------------------------------------

    async def _patch_workflow(self, args: dict[str, Any]) -> dict[str, Json]:
        operations, reason = args.get("operations"), args.get("reason", "")
        definition = await self.current_definition()
        problems = self._local_problems(operations, definition)
        if problems or not isinstance(operations, list):
            return self._refused(problems, operations, definition)
        outcome = await self._propose(operations, reason if isinstance(reason, str) else "")
        if outcome.get("status") == "rejected":
            problems = [str(p) for p in outcome.get("problems") or []]
            return self._refused(problems, operations, definition)
        if outcome.get("status") == "applied" and definition is not None:
            local = apply_patch(
                definition,
                operations,
                frozen_nodes=frozenset(),
                base_node_ids=frozenset(),
                agents_added_so_far=0,
            )
            self._definition = local.definition
        return outcome

    async def current_definition(self) -> dict[str, Any] | None:
        if self._definition is None and self.services.definitions is not None:
            self._definition = await self.services.definitions(self.task.run_id)
        return self._definition

    def _local_problems(self, operations: Any, definition: dict[str, Any] | None) -> list[str]:
        """What the coordinator would surely refuse, checked before proposing (it
        decides for good: it knows which nodes started and how many agents were added)."""
        if not isinstance(operations, list) or not operations:
            return ["operations must be a non-empty array of RFC 6902 operations"]
        if definition is None:
            return []
        finished = self.task.input.get("nodes", {}) if isinstance(self.task.input, dict) else {}
        frozen = frozenset([*finished, self.task.node_id])
        outcome = apply_patch(
            definition,
            operations,
            frozen_nodes=frozen,
            base_node_ids=frozenset(),
            agents_added_so_far=0,
        )
        return [str(p) for p in outcome.problems if "agent spawn limit" not in p.message]

    async def _propose(self, operations: list[Any], reason: str) -> dict[str, Json]:
        task, log = self.task, self.services.log
        patch_id = "patch_" + uuid.uuid4().hex[:16]
        proposal = PatchProposed(
            task.run_id,
            patch_id,
            operations,
            reason,
            node_id=task.node_id,
            iteration=task.iteration,
            attempt=task.attempt,  # only this attempt may patch
        )
        event = agent_event(task, proposal)
        (record,) = await log.append([Append(RUNS_TOPIC, task.run_id, encode(event))])

        def outcome(event: Event) -> dict[str, Json] | None:
            payload = event.payload
            if getattr(payload, "patch_id", None) != patch_id:
                return None
            if isinstance(payload, PatchApplied):
                return {
                    "status": "applied",
                    "patch_id": patch_id,
                    "revision": payload.revision,
                    "added_nodes": list(payload.added_nodes),
                }
            if isinstance(payload, PatchRejected):
                return {
                    "status": "rejected",
                    "patch_id": patch_id,
                    "problems": list(payload.reasons),
                }
            if isinstance(payload, PatchReviewRequested):
                return {
                    "status": "awaiting_review",
                    "patch_id": patch_id,
                    "note": "a person must approve this patch; it applies once approved",
                }
            return None

        try:
            result = await wait_for_run_event(
                log, task.run_id, record.partition, record.offset + 1, outcome, self._remaining()
            )
        except RunFinished as finished:
            result = {"status": "not_applied", "patch_id": patch_id, "note": str(finished)}
        self.patches.append({"patch_id": patch_id, "status": result["status"]})
        return result

    def _refused(
        self, problems: list[str], operations: Any, definition: dict[str, Any] | None
    ) -> dict[str, Json]:
        self.patch_failures += 1
        limit = self.services.defaults.max_patch_attempts
        if self.patch_failures >= limit:
            raise AgentFailure(
                f"patch_workflow: {self.patch_failures} invalid patches (limit {limit}); "
                f"last problems: {'; '.join(problems)}"
            )
        return {
            "status": "rejected",
            "problems": problems,
            "attempts_left": limit - self.patch_failures,
            "corrected_example": corrected_example(operations, definition, self.task.node_id),
            "hint": "fix the operations named in the problems and call patch_workflow again",
        }

    # --- delegate_to_agent ----------------------------------------------------------

    async def _delegate_to_agent(self, args: dict[str, Any]) -> dict[str, Json]:
        text = args.get("task")
        if not isinstance(text, str) or not text.strip():
            return {"error": "task must be a non-empty string"}
        task, log = self.task, self.services.log
        self.delegations += 1
        delegate_id = f"{task.node_id}/delegate-{self.delegations}"
        config = {
            "prompt": text,
            "delegation_depth": self.config.delegation_depth + 1,
            "tools": [t for t in self.config.tools if t != "patch_workflow"],
            "model": self.config.endpoint.model,
            "endpoint": self.config.endpoint.name,  # the delegate uses the same endpoint
            "max_wall_ms": max(1, int(self._remaining() * 1000)),
        }
        inputs = {"task": text, "context": args.get("context")}
        work = NodeScheduled(
            task.run_id,
            delegate_id,
            "agent",
            task.iteration,
            task.attempt,
            config,
            {"inputs": inputs, "nodes": {}, "iteration": 0},
            tenant=task.tenant,
        )  # and runs for the same tenant
        partition, offset = await run_position(log, task.run_id)
        event = agent_event(task, work)
        await log.append([Append(task_topic("agent"), task.run_id, encode(event))])

        def outcome(event: Event) -> dict[str, Json] | None:
            p = event.payload
            if not isinstance(p, NodeCompleted | NodeFailed) or p.node_id != delegate_id:
                return None
            if (p.iteration, p.attempt) != (task.iteration, task.attempt):
                return None
            if isinstance(p, NodeFailed):
                return {"status": "failed", "error": p.error}
            answer = p.output.get("answer") if isinstance(p.output, dict) else p.output
            return {"status": "completed", "answer": answer}

        try:
            return await wait_for_run_event(
                log, task.run_id, partition, offset, outcome, self._remaining()
            )
        except RunFinished as finished:
            return {"status": "failed", "error": str(finished)}


def _input_problem(parameters: Any, value: Json) -> str | None:
    """The input's problems against a tool's parameters schema (offline: a reference
    outside the schema is a problem, never fetched)."""
    if not isinstance(parameters, dict):
        return None
    return "; ".join(schema_problems(parameters, value, limit=5)) or None


def _result(result: dict[str, Json], limit: int = 16_000) -> str:
    text = json.dumps(result, ensure_ascii=False, separators=(",", ":"), default=str)
    if len(text) <= limit:
        return text
    note = f"…(cut: {len(text)} characters; narrow the result, e.g. with top_k or table_select)"
    return text[:limit] + note


# --- corrected examples -------------------------------------------------------------


def corrected_example(
    operations: Any, definition: dict[str, Any] | None, node_id: str
) -> list[dict[str, Json]]:
    """The model's operations with the usual mistakes fixed, or a template of the
    usual patch (a node after this one) when nothing of them can be kept."""
    ids = {n.get("id") for n in (definition or {}).get("nodes", []) if isinstance(n, dict)}
    ops = [op for op in operations if isinstance(op, dict)] if isinstance(operations, list) else []
    renamed: dict[str, str] = {}
    fixed = [_fixed(op, ids, renamed) for op in ops]
    fixed = [_renamed_edge(op, renamed) for op in fixed]
    if definition is not None and "edges" not in definition:
        fixed = _first_edges(fixed)
    if fixed and fixed != operations:
        return fixed
    new_id = _unused(f"{node_id}-next", ids)
    return [
        {
            "op": "add",
            "path": "/nodes/-",
            "value": {
                "id": new_id,
                "type": "transform",
                "config": {"expr": f'.nodes["{node_id}"]'},
            },
        },
        {"op": "add", "path": "/edges/-", "value": {"from": node_id, "to": new_id}},
    ]


def _fixed(op: dict[str, Any], ids: set[Any], renamed: dict[str, str]) -> dict[str, Json]:
    fixed = dict(op)
    if "op" not in fixed and "operation" in fixed:
        fixed["op"] = fixed.pop("operation")
    path = fixed.get("path")
    if isinstance(path, str) and not path.startswith("/"):
        fixed["path"] = path = "/" + path
    if fixed.get("op") == "add" and path in ("/nodes", "/edges"):
        fixed["path"] = path = f"{path}/-"
    value = fixed.get("value")
    if fixed.get("op") == "add" and isinstance(path, str) and isinstance(value, dict):
        value = dict(value)
        if path.startswith("/nodes/"):
            node_id = value.get("id")
            if isinstance(node_id, str) and node_id in ids:  # taken: a new name
                value["id"] = renamed[node_id] = _unused(node_id, ids)
            value.setdefault("type", "transform")
            if value["type"] == "transform":
                value.setdefault("config", {"expr": "."})
        elif path.startswith("/edges/"):
            for wrong, right in (("source", "from"), ("target", "to")):
                if wrong in value and right not in value:
                    value[right] = value.pop(wrong)
        fixed["value"] = value
    return fixed


def _renamed_edge(op: dict[str, Json], renamed: dict[str, str]) -> dict[str, Json]:
    value = op.get("value")
    path = op.get("path")
    if not (isinstance(path, str) and path.startswith("/edges/") and isinstance(value, dict)):
        return op
    to = value.get("to")
    if isinstance(to, str) and to in renamed:
        return {**op, "value": {**value, "to": renamed[to]}}
    return op


def _first_edges(ops: list[dict[str, Json]]) -> list[dict[str, Json]]:
    """A definition without an edges array: the edges appended go in one new array."""
    edges = [op["value"] for op in ops if op.get("op") == "add" and op.get("path") == "/edges/-"]
    if not edges:
        return ops
    rest = [op for op in ops if not (op.get("op") == "add" and op.get("path") == "/edges/-")]
    return [*rest, {"op": "add", "path": "/edges", "value": edges}]


def _unused(base: str, ids: set[Any]) -> str:
    candidate, n = base, 2
    while candidate in ids:
        candidate, n = f"{base}-{n}", n + 1
    return candidate
