"""Commands: validate a request against the domain, then record it as events.

Commands never write read models: they append events and, where the caller needs
to read its own write, wait until the read models include it (in whichever process
the projector runs).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aob.events.codec import encode
from aob.events.ids import new_event_id
from aob.events.log.port import Append, Record
from aob.events.types import (
    RUNS_TOPIC,
    WORKFLOWS_TOPIC,
    Event,
    PatchProposed,
    Payload,
    RunCancelRequested,
    RunSubmitted,
    TagMoved,
    WorkflowCreated,
)
from aob.platform.engine import Engine
from aob.platform.problems import Problem, invalid_workflow, not_found
from aob.projections.readmodels.views import BLOB_REF
from aob.projections.workflow.definition import SETTING_NAMES, Limits, validate_definition
from aob.projections.workflow.materialize import apply_patch
from aob.workers.outputs import OutputError, fetch_output

FINISHED_RUN = ("completed", "failed", "cancelled")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_run_id() -> str:
    return "run_" + uuid.uuid4().hex[:20]


def new_patch_id() -> str:
    return "patch_" + uuid.uuid4().hex[:16]


class Commands:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.read = engine.read_models
        self._versions = asyncio.Lock()  # one writer assigns workflow versions

    # --- workflows and tags --------------------------------------------------------

    def validate(self, definition: Any) -> None:
        settings = self.engine.settings  # AOB_WORKFLOW_MAX_*: see Limits
        limits = Limits(**{name: getattr(settings, f"workflow_{name}") for name in SETTING_NAMES})
        problems = validate_definition(definition, limits)
        if problems:
            raise invalid_workflow([{"path": p.path, "message": p.message} for p in problems])

    async def create_workflow(
        self,
        definition: dict[str, Any],
        *,
        tag: str | None,
        actor: str,
        trace_id: str,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """Store a new version of the workflow named in the definition (of `tenant`, the
        creator's); move its tag."""
        self.validate(definition)
        workflow_id = definition["name"]
        tag = tag if tag is not None else workflow_id
        async with self._versions:
            await self.engine.projected.wait_caught_up()
            latest = await self.read.get_workflow(workflow_id)
            _refuse_foreign(latest, tenant, "workflow id", workflow_id)
            version = (latest["version"] + 1) if latest else 1
            previous = await self.read.get_tag(tag) if tag else None
            _refuse_foreign(previous, tenant, "tag", tag)
            payloads: list[Payload] = [
                WorkflowCreated(workflow_id, version, definition, tenant=tenant)
            ]
            if tag:
                payloads.append(_tag_moved(tag, workflow_id, version, previous, tenant))
            records = await self._append(WORKFLOWS_TOPIC, workflow_id, payloads, actor, trace_id)
            await self.engine.projected.wait_for(records)
        return {"workflow_id": workflow_id, "version": version, "tag": tag or None}

    async def move_tag(
        self,
        tag: str,
        workflow_id: str,
        version: int | None,
        *,
        actor: str,
        trace_id: str,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        async with self._versions:
            await self.engine.projected.wait_caught_up()
            workflow = await self.read.get_workflow(workflow_id, version)
            if workflow is None or not _visible(workflow, tenant):
                ident = f"{workflow_id}@{version}" if version else workflow_id
                raise not_found("workflow", ident)
            previous = await self.read.get_tag(tag)
            _refuse_foreign(previous, tenant, "tag", tag)
            payload = _tag_moved(tag, workflow_id, workflow["version"], previous, tenant)
            records = await self._append(WORKFLOWS_TOPIC, workflow_id, [payload], actor, trace_id)
            await self.engine.projected.wait_for(records)
        return {"tag": tag, "workflow_id": workflow_id, "version": workflow["version"]}

    async def resolve_workflow(
        self, ref: str, version: int | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        """A workflow by tag, or by id (latest or given version); of `tenant` only, when
        given (another tenant's answers as one that does not exist)."""
        tag = await self.read.get_tag(ref) if version is None else None
        if tag is not None and _visible(tag, tenant):
            workflow = await self.read.get_workflow(tag["workflow_id"], tag["version"])
        else:
            workflow = await self.read.get_workflow(ref, version)
        if workflow is None or not _visible(workflow, tenant):
            raise not_found("workflow or tag", ref if version is None else f"{ref}@{version}")
        return workflow

    # --- runs ----------------------------------------------------------------------

    async def submit_run(
        self,
        *,
        definition: dict[str, Any] | None,
        tag: str | None,
        workflow_id: str | None,
        version: int | None,
        inputs: Any,
        actor: str,
        trace_id: str,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """Record a run (of `tenant`, the submitter's); returns once its `RunSubmitted`
        is durable in the log."""
        if sum(x is not None for x in (definition, tag, workflow_id)) != 1:
            raise Problem(
                400,
                "bad-request",
                "Bad run request",
                "give exactly one of 'definition', 'tag' or 'workflow_id'",
            )
        if definition is not None:
            self.validate(definition)
        else:
            workflow = await self.resolve_workflow(tag or workflow_id or "", version, tenant)
            definition = workflow["definition"]
            workflow_id, version = workflow["workflow_id"], workflow["version"]
        run_id = new_run_id()
        payload = RunSubmitted(
            run_id,
            definition,
            inputs,
            self.engine.known_types,
            workflow_id,
            version,
            tag,
            tenant=tenant,
        )
        await self._append(RUNS_TOPIC, run_id, [payload], actor, trace_id)
        return {"run_id": run_id, "status": "accepted", "trace_id": trace_id}

    async def run(self, run_id: str) -> dict[str, Any]:
        """The run's read model; waits for the projector if the run is that new."""
        run = await self.read.get_run(run_id)
        if run is None:
            await self.engine.projected.wait_caught_up(timeout=2.0)
            run = await self.read.get_run(run_id)
        if run is None:
            raise not_found("run", run_id)
        run["output"] = await self._fetched(run.get("output"))
        for node in run.get("nodes") or []:
            node["output"] = await self._fetched(node.get("output"))
        return run

    async def _fetched(self, output: Any) -> Any:
        """An output as the user wrote it: fetched from the blob store when the read
        model holds only its reference."""
        ref = output.get(BLOB_REF) if isinstance(output, dict) and len(output) == 1 else None
        if not isinstance(ref, str):
            return output
        try:
            return await fetch_output(ref, self.engine.blobs)
        except OutputError:
            return output  # not in this process's store: show the reference

    async def cancel_run(
        self, run_id: str, reason: str, *, actor: str, trace_id: str
    ) -> dict[str, Any]:
        run = await self.run(run_id)
        _refuse_finished(run, "cancel")
        await self._append(
            RUNS_TOPIC, run_id, [RunCancelRequested(run_id, reason)], actor, trace_id
        )
        return {"run_id": run_id, "status": "cancelling"}

    async def propose_patch(
        self, run_id: str, operations: list[Any], reason: str, *, actor: str, trace_id: str
    ) -> dict[str, Any]:
        """Check a patch against the run as the read models see it, then propose it.

        The coordinator decides for good (the run may have moved on meanwhile);
        this waits briefly for its decision so the caller usually gets the outcome.
        """
        run = await self.run(run_id)
        _refuse_finished(run, "patch")
        frozen = frozenset(n["node_id"] for n in run["nodes"] if n["status"] != "skipped")
        outcome = apply_patch(
            run["definition"],
            operations,
            frozen_nodes=frozen,
            base_node_ids=frozenset(),
            agents_added_so_far=0,
        )
        if outcome.problems:
            raise Problem(
                422,
                "invalid-patch",
                "Invalid patch",
                f"the patch has {len(outcome.problems)} problem(s)",
                errors=[{"path": p.path, "message": p.message} for p in outcome.problems],
            )
        patch_id = new_patch_id()
        records = await self._append(
            RUNS_TOPIC,
            run_id,
            [PatchProposed(run_id, patch_id, operations, reason)],
            actor,
            trace_id,
        )
        await self.engine.projected.wait_for(records)
        await self.engine.projected.wait_caught_up(timeout=2.0)
        patch = await self.read.get_patch(run_id, patch_id)
        return patch or {"patch_id": patch_id, "status": "proposed"}

    # --- plumbing --------------------------------------------------------------------

    async def _append(
        self, topic: str, key: str, payloads: Sequence[Payload], actor: str, trace_id: str
    ) -> list[Record]:
        at = now_ms()
        appends = [
            Append(topic, key, encode(Event(new_event_id(), key, at, p, trace_id, None, actor)))
            for p in payloads
        ]
        return await self.engine.log.append(appends)


def _tag_moved(
    tag: str,
    workflow_id: str,
    version: int,
    previous: dict[str, Any] | None,
    tenant: str | None = None,
) -> TagMoved:
    if previous is None:
        return TagMoved(tag, workflow_id, version, tenant=tenant)
    return TagMoved(
        tag, workflow_id, version, previous["workflow_id"], previous["version"], tenant=tenant
    )


def _visible(row: dict[str, Any], tenant: str | None) -> bool:
    """Whether a workflow or tag row belongs to `tenant` (None: any tenant may see it)."""
    return tenant is None or row.get("tenant", tenant) == tenant


def _refuse_foreign(row: dict[str, Any] | None, tenant: str | None, what: str, name: str) -> None:
    """Ids and tag names are unique across tenants: another tenant's stays theirs."""
    if row is not None and not _visible(row, tenant):
        raise Problem(
            409,
            "name-taken",
            f"{what.capitalize()} taken",
            f"the {what} {name!r} is in use; choose another name",
        )


def _refuse_finished(run: dict[str, Any], action: str) -> None:
    if run["status"] in FINISHED_RUN:
        raise Problem(
            409,
            "run-finished",
            "Run already finished",
            f"cannot {action} run {run['run_id']!r}: it is {run['status']}",
            run_status=run["status"],
        )
