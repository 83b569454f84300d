"""The application layer: every command validated against the domain, then recorded
as events.

Submit, cancel, patch, review a patch, fork a run, register a tool, create a workflow,
move a tag, put a dead letter back (and, in `aob.platform.approvals`, decide an
approval) all end in `record_events`, the one place that turns payloads into appended
events. Routers only translate HTTP: they parse, call a command, map its result or its
`Problem` to a response.

Commands never write read models: they append events and, where the caller needs
to read its own write, wait until the read models include it (in whichever process
the projector runs).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final, Literal, TypeVar

from aob.events.codec import encode
from aob.events.ids import derived_event_id, new_event_id, new_run_id
from aob.events.log.port import Append, Record, TopicPartition
from aob.events.partitioner import partition_for
from aob.events.tracing import current_span_id
from aob.events.types import (
    RUNS_TOPIC,
    TOOLS_TOPIC,
    WORKFLOWS_TOPIC,
    Event,
    Json,
    PatchProposed,
    PatchReviewed,
    Payload,
    RunCancelRequested,
    RunSubmitted,
    SignalReceived,
    TagMoved,
    TagMoveRequested,
    ToolRegistered,
    WorkflowCreated,
    WorkflowCreateRequested,
    WorkflowRequestRefused,
)
from aob.platform.engine import Engine
from aob.platform.problems import Problem, invalid_workflow, not_found
from aob.platform.replay import NO_EDITS, Edits, fork, run_events
from aob.projections.coordinator.approvals import MAX_SIGNALS_PER_RUN
from aob.projections.readmodels.views import BLOB_REF, ESCAPED
from aob.projections.runtime.decider import NoDecision, tag_request_id, wait_for_decision
from aob.projections.workflow.definition import (
    SETTING_NAMES,
    Checked,
    Limits,
    canonical_digest,
    check_definition,
    unknown_type_problems,
)
from aob.projections.workflow.materialize import (
    DEFAULT_PATCH_LIMITS,
    PatchReplayError,
    apply_patch,
    materialize,
)
from aob.workers.agent.catalog import InvalidTool, check_registration, tool_key
from aob.workers.outputs import OutputError, fetch_output

FINISHED_RUN = ("completed", "failed", "cancelled")
# How long a workflow or tag request waits for its decider's answer (it is kept in the
# log either way, and decided once a decider runs).
DECISION_TIMEOUT: Final = 10.0
# How long a patch review waits to answer with the coordinator's decision.
REVIEW_WAIT_S: Final = 2.0

Decided = TypeVar("Decided", WorkflowCreated, TagMoved)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_patch_id() -> str:
    return "patch_" + uuid.uuid4().hex[:16]


async def record_events(
    engine: Engine,
    topic: str,
    key: str,
    payloads: Sequence[Payload],
    *,
    actor: str,
    trace_id: str,
) -> list[Record]:
    """Append `payloads` as events of `key` by `actor`: how every command writes."""
    at = now_ms()
    span = current_span_id()  # the request's span: what handles the events is its child
    appends = [
        Append(topic, key, encode(Event(new_event_id(), key, at, p, trace_id, None, actor, span)))
        for p in payloads
    ]
    return await engine.log.append(appends)


# Workflow versions kept in memory by an API process (least recently used dropped).
CACHED_WORKFLOW_VERSIONS: Final = 1024
# Definition checks kept likewise: clients submit one inline definition run after run,
# and checking it costs more than the rest of a submission.
CACHED_DEFINITION_CHECKS: Final = 256


class Commands:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.read = engine.read_models
        # A version of a workflow never changes once recorded: a submission by tag
        # reads only the tag (which moves), not the definition again.
        self._versions: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        # Tag rows as last read, with the in-process projector's positions in the
        # workflows topic before that read: while those have not moved, the tags read
        # model has not changed (only that topic's events change it).
        self._tags: OrderedDict[str, tuple[tuple[tuple[int, int], ...], Any]] = OrderedDict()
        # By the definition's digest and all else a check depends on.
        self._checks: OrderedDict[tuple[Any, ...], Checked] = OrderedDict()

    # --- workflows and tags --------------------------------------------------------

    def validate(self, definition: Any) -> list[dict[str, str]]:
        """Refuses an invalid definition (422 listing every problem); returns its
        warnings (nodes of unknown types, unless AOB_UNKNOWN_NODE_TYPES=error)."""
        checked = self._checked(definition)
        if checked.problems:
            raise invalid_workflow(
                [{"path": p.path, "message": p.message} for p in checked.problems]
            )
        return [{"path": p.path, "message": p.message} for p in checked.warnings]

    def _checked(self, definition: Any) -> Checked:
        """`check_definition` under this API's settings, kept by the definition's digest."""
        settings = self.engine.settings  # AOB_WORKFLOW_MAX_*: see Limits
        limits = Limits(**{name: getattr(settings, f"workflow_{name}") for name in SETTING_NAMES})
        known, unknown = frozenset(self.engine.known_types), settings.unknown_node_types
        digest = canonical_digest(definition)
        key = (digest, limits, known, unknown)
        checked = self._checks.get(key) if digest is not None else None
        if checked is not None:
            self._checks.move_to_end(key)
            return checked
        checked = check_definition(definition, limits, known_types=known, unknown_types=unknown)
        if digest is not None:
            self._checks[key] = checked
            if len(self._checks) > CACHED_DEFINITION_CHECKS:
                self._checks.popitem(last=False)
        return checked

    def _unknown_types(self, definition: Any) -> list[dict[str, str]]:
        """A stored definition's warnings: its nodes of types no worker runs now."""
        refused = self.engine.settings.unknown_node_types == "error"
        found = [
            {"path": p.path, "message": p.message}
            for p in unknown_type_problems(definition, self.engine.known_types, refused=refused)
        ]
        if found and refused:
            raise invalid_workflow(found)
        return found

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
        creator's); move its tag.

        The version is decided by the single writer of the workflow id (`aob.projections
        .runtime.decider`): this appends the request and answers from the decision, so
        concurrent creators, in any process, get distinct versions.
        """
        self.validate(definition)
        workflow_id = definition["name"]
        tag = tag if tag is not None else workflow_id
        # A name's owner never changes: refuse another tenant's at once from the read
        # models (the decider has the last word for names taken meanwhile).
        _refuse_foreign(
            await self.read.get_workflow(workflow_id), tenant, "workflow id", workflow_id
        )
        if tag:
            _refuse_foreign(await self.read.get_tag(tag), tenant, "tag", tag)
        log = self.engine.log
        tag_at: tuple[TopicPartition, int] | None = None
        if tag:  # the tag's writer answers in the tag's partition, after its end now
            tag_tp = TopicPartition(
                WORKFLOWS_TOPIC, partition_for(tag, await log.partitions(WORKFLOWS_TOPIC))
            )
            tag_at = (tag_tp, (await log.end_offsets(WORKFLOWS_TOPIC))[tag_tp.partition])
        request = WorkflowCreateRequested(workflow_id, definition, tag or None, tenant)
        asked, request_id = await self._request(workflow_id, request, actor, trace_id)
        record, created = await self._decision(
            asked.position, asked.offset + 1, request_id, WorkflowCreated
        )
        version = created.version
        decided = [record]
        if tag_at is not None:
            record, _ = await self._decision(
                *tag_at,
                tag_request_id(request_id),
                TagMoved,
                done=f"version {version} of {workflow_id!r} was created, but ",
            )
            decided.append(record)
        await self.engine.projected.wait_for(decided)
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
        """Point `tag` at a version (the latest by default); the tag's single writer
        decides the move (and what it replaces)."""
        await self.engine.projected.wait_caught_up()
        workflow = await self.read.get_workflow(workflow_id, version)
        if workflow is None or not _visible(workflow, tenant):
            ident = f"{workflow_id}@{version}" if version else workflow_id
            raise not_found("workflow", ident)
        _refuse_foreign(await self.read.get_tag(tag), tenant, "tag", tag)
        request = TagMoveRequested(tag, workflow_id, workflow["version"], tenant)
        asked, request_id = await self._request(tag, request, actor, trace_id)
        record, _ = await self._decision(asked.position, asked.offset + 1, request_id, TagMoved)
        await self.engine.projected.wait_for([record])
        return {"tag": tag, "workflow_id": workflow_id, "version": workflow["version"]}

    async def _decision(
        self,
        tp: TopicPartition,
        after: int,
        request_id: str,
        answer: type[Decided],
        *,
        done: str = "",
    ) -> tuple[Record, Decided]:
        """The decider's answer to a request: `answer`, else a Problem (refused, or no
        answer in time). `done` says what happened already, should it be refused."""
        try:
            record, event = await wait_for_decision(
                self.engine.log,
                tp,
                after,
                request_id,
                (answer, WorkflowRequestRefused),
                DECISION_TIMEOUT,
            )
        except NoDecision:
            raise Problem(
                503,
                "not-decided-yet",
                "Request recorded, not decided yet",
                "the request is in the log but no workflow decider answered within "
                f"{DECISION_TIMEOUT:.0f}s (is the projector service running?); it will be "
                "decided when one runs: look the workflow up later",
                headers={"Retry-After": "5"},
            ) from None
        payload = event.payload
        if isinstance(payload, WorkflowRequestRefused):
            raise _name_taken(payload.subject, payload.name, done)
        assert isinstance(payload, answer)
        return record, payload

    async def resolve_workflow(
        self, ref: str, version: int | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        """A workflow by tag, or by id (latest or given version); of `tenant` only, when
        given (another tenant's answers as one that does not exist)."""
        tag = await self._tag(ref) if version is None else None
        if tag is not None and _visible(tag, tenant):
            workflow = await self._workflow_version(tag["workflow_id"], tag["version"])
        elif version is not None:
            workflow = await self._workflow_version(ref, version)
        else:
            workflow = await self.read.get_workflow(ref)
        if workflow is None or not _visible(workflow, tenant):
            raise not_found("workflow or tag", ref if version is None else f"{ref}@{version}")
        return workflow

    async def _tag(self, tag: str) -> dict[str, Any] | None:
        """The tag's row, as the read models have it now."""
        position = self._workflows_position()
        if position is None:  # the read models are fed by another process
            return await self.read.get_tag(tag)
        cached = self._tags.get(tag)
        if cached is not None and cached[0] == position:
            self._tags.move_to_end(tag)
            row = cached[1]
        else:
            row = await self.read.get_tag(tag)
            self._tags[tag] = (position, row)
            self._tags.move_to_end(tag)
            if len(self._tags) > CACHED_WORKFLOW_VERSIONS:
                self._tags.popitem(last=False)
        return None if row is None else dict(row)

    def _workflows_position(self) -> tuple[tuple[int, int], ...] | None:
        """Where this process's projector is in the workflows topic (None: no projector
        in this process)."""
        projector = self.engine.projector
        if projector is None:
            return None
        return tuple(
            sorted(
                (tp.partition, at)
                for tp, at in projector.applied.items()
                if tp.topic == WORKFLOWS_TOPIC
            )
        )

    async def _workflow_version(self, workflow_id: str, version: int) -> dict[str, Any] | None:
        """One recorded version (a copy of the row: callers may add to it)."""
        key = (workflow_id, version)
        row = self._versions.get(key)
        if row is None:
            row = await self.read.get_workflow(workflow_id, version)
            if row is None:
                return None
            self._versions[key] = row
            if len(self._versions) > CACHED_WORKFLOW_VERSIONS:
                self._versions.popitem(last=False)
        else:
            self._versions.move_to_end(key)
        return dict(row)

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
            warnings = self.validate(definition)
        else:
            workflow = await self.resolve_workflow(tag or workflow_id or "", version, tenant)
            definition = workflow["definition"]
            workflow_id, version = workflow["workflow_id"], workflow["version"]
            warnings = self._unknown_types(definition)
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
        accepted = {"run_id": run_id, "status": "accepted", "trace_id": trace_id}
        return {**accepted, "warnings": warnings} if warnings else accepted

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
        model holds only its reference, unwrapped when it holds it escaped (views)."""
        if not (isinstance(output, dict) and len(output) == 1):
            return output
        if ESCAPED in output:
            return output[ESCAPED]
        ref = output.get(BLOB_REF)
        if not isinstance(ref, str):
            return output
        try:
            return await fetch_output(ref, self.engine.blobs)
        except OutputError:
            return output  # not in this process's store: show the reference

    async def send_signal(
        self,
        run_id: str,
        name: str,
        payload: Any,
        *,
        key: str | None,
        actor: str,
        trace_id: str,
    ) -> tuple[dict[str, Any], bool]:
        """Record the signal `name` on a running run (`SignalReceived`); returns it and
        whether it is new. With `key`, sending it again returns the first one: its event
        id derives from (run, name, key), so even a racing duplicate is folded once."""
        run = await self.run(run_id)
        event_id = None if key is None else derived_event_id(f"{run_id}/signal/{name}", key)
        sent = await self._signals(run_id)
        earlier = next((e for e in sent if e["event_id"] == event_id), None)
        if earlier is not None:
            return _signal(earlier), False
        _refuse_finished(run, "signal")
        if len(sent) >= MAX_SIGNALS_PER_RUN:
            raise Problem(
                409,
                "too-many-signals",
                "Too many signals",
                f"run {run_id!r} already has {len(sent)} signals, the most a run keeps",
            )
        event = Event(
            event_id or new_event_id(),
            run_id,
            now_ms(),
            SignalReceived(run_id, name, payload, actor),
            trace_id,
            None,
            actor,
            current_span_id(),
        )
        records = await self.engine.log.append([Append(RUNS_TOPIC, run_id, encode(event))])
        await self.engine.projected.wait_for(records)
        return _signal(
            {
                "event_id": event.event_id,
                "occurred_at": event.occurred_at,
                "actor": actor,
                "data": {"name": name, "payload": payload, "sent_by": actor},
            }
        ), True

    async def _signals(self, run_id: str) -> list[dict[str, Any]]:
        """The run's signals so far (timeline rows), oldest first."""
        found: list[dict[str, Any]] = []
        after = None
        while True:
            page = await self.read.timeline(run_id, after_offset=after, limit=1000)
            found += [e for e in page if e["type"] == "SignalReceived"]
            if len(page) < 1000:
                return found
            after = page[-1]["offset"]

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

    async def review_patch(
        self,
        run_id: str,
        patch_id: str,
        decision: Literal["approve", "reject"],
        reason: str,
        *,
        actor: str,
        trace_id: str,
    ) -> dict[str, Any]:
        """Record a reviewer's decision on a patch awaiting review; the patch once the
        coordinator has decided it, or as it stands if that takes longer (status
        still "proposed")."""
        await self.run(run_id)
        patch = await self.patch(run_id, patch_id)
        if patch["review"] != "pending":
            state = patch["review"] or f"not under review ({patch['status']})"
            raise Problem(
                409,
                "patch-not-awaiting-review",
                "Patch not awaiting review",
                f"patch {patch_id!r} is {state}",
                status_now=patch["status"],
                review=patch["review"],
            )
        payload = PatchReviewed(run_id, patch_id, decision, actor, reason)
        records = await self._append(RUNS_TOPIC, run_id, [payload], actor, trace_id)
        await self.engine.projected.wait_for(records)
        return await self._patch_decided(run_id, patch_id)

    async def _patch_decided(self, run_id: str, patch_id: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REVIEW_WAIT_S
        while True:
            patch = await self.patch(run_id, patch_id)
            if patch["status"] != "proposed" or loop.time() > deadline:
                return patch
            await asyncio.sleep(0.01)

    async def patch(self, run_id: str, patch_id: str) -> dict[str, Any]:
        patch = await self.read.get_patch(run_id, patch_id)
        if patch is None:
            raise not_found("patch", f"{run_id}/{patch_id}")
        return patch

    async def patch_with_diff(self, run_id: str, patch_id: str) -> dict[str, Any]:
        """The patch; while it is undecided, `diff` shows what it would change in the
        run's current (materialized) workflow."""
        run = await self.run(run_id)
        patch = await self.patch(run_id, patch_id)
        diff = None
        if patch["status"] == "proposed":
            diff = workflow_diff(run["definition"], patch["operations"])
        return {**patch, "diff": diff}

    async def replay_run(
        self,
        run_id: str,
        from_event: int | None,
        *,
        actor: str,
        trace_id: str,
        edits: Edits = NO_EDITS,
    ) -> dict[str, Any]:
        """Fork a new run from run `run_id` as the fold had it after its event
        `from_event` (None: from its submission), with `edits` (see
        `aob.platform.replay`: an edited definition is validated as any submitted one,
        and completed nodes the edits affect run again); returns the accepted fork."""
        replayed = await self.run(run_id)  # 404 for an unknown run
        await self.engine.projected.wait_caught_up(timeout=2.0)  # the history up to now
        history = await run_events(self.read, run_id)
        forked = fork(run_id, history, from_event, edits, check=self.validate)
        new_id = new_run_id()
        submitted = RunSubmitted(
            new_id,
            forked.definition,
            forked.inputs,
            self.engine.known_types,
            forked.workflow_id,
            forked.version,
            forked.tag,
            forked.checkpoint(run_id),
            tenant=replayed.get("tenant"),  # a fork stays in its run's tenant
        )
        await self._append(RUNS_TOPIC, new_id, [submitted], actor, trace_id)
        return {
            "run_id": new_id,
            "status": "accepted",
            "replay_of": run_id,
            "from_event": from_event,
            "seeded_nodes": sorted(forked.outputs),
            "rerun_nodes": list(forked.rerun),
            "trace_id": trace_id,
        }

    # --- tools and dead letters -------------------------------------------------------

    async def register_tool(
        self,
        name: str,
        kind: str,
        spec: dict[str, Json],
        description: str,
        *,
        tenant: str | None,
        actor: str,
        trace_id: str,
    ) -> dict[str, Any]:
        """Register (or replace) `tenant`'s tool `name`; answers once this process's
        catalog holds it."""
        try:
            check_registration(name, kind, spec)
        except InvalidTool as error:
            raise Problem(422, "invalid-tool", "Invalid tool", str(error)) from None
        payload = ToolRegistered(name, kind, spec, description, tenant)
        await self._append(TOOLS_TOPIC, tool_key(name, tenant), [payload], actor, trace_id)
        await self.engine.tools.catch_up(self.engine.log)  # read your write
        return {"name": name, "kind": kind, "description": description}

    async def requeue(self, topic: str, key: str, value: bytes) -> Record:
        """Append a dead letter's original record (its bytes as they were) to its source
        topic again, for its consumers to process once more."""
        (record,) = await self.engine.log.append([Append(topic, key, value)])
        return record

    # --- plumbing --------------------------------------------------------------------

    async def _request(
        self, key: str, payload: Payload, actor: str, trace_id: str
    ) -> tuple[Record, str]:
        """Append a request to aob.workflows; its record and event id."""
        event = Event(
            new_event_id(), key, now_ms(), payload, trace_id, None, actor, current_span_id()
        )
        (record,) = await self.engine.log.append([Append(WORKFLOWS_TOPIC, key, encode(event))])
        return record, event.event_id

    async def _append(
        self, topic: str, key: str, payloads: Sequence[Payload], actor: str, trace_id: str
    ) -> list[Record]:
        return await record_events(
            self.engine, topic, key, payloads, actor=actor, trace_id=trace_id
        )


def _signal(row: dict[str, Any]) -> dict[str, Any]:
    """A signal as the API shows it, from its timeline row."""
    data = row["data"]
    return {
        "event_id": row["event_id"],
        "name": data["name"],
        "payload": data["payload"],
        "sent_by": data["sent_by"],
        "sent_at": row["occurred_at"],
    }


def _visible(row: dict[str, Any], tenant: str | None) -> bool:
    """Whether a workflow or tag row belongs to `tenant` (None: any tenant may see it)."""
    return tenant is None or row.get("tenant", tenant) == tenant


def _refuse_foreign(row: dict[str, Any] | None, tenant: str | None, what: str, name: str) -> None:
    """Ids and tag names are unique across tenants: another tenant's stays theirs."""
    if row is not None and not _visible(row, tenant):
        raise _name_taken(what, name)


def _name_taken(what: str, name: str, done: str = "") -> Problem:
    detail = f"the {what} {name!r} is in use; choose another name"
    return Problem(409, "name-taken", f"{what.capitalize()} taken", done + detail)


def _refuse_finished(run: dict[str, Any], action: str) -> None:
    if run["status"] in FINISHED_RUN:
        raise Problem(
            409,
            "run-finished",
            "Run already finished",
            f"cannot {action} run {run['run_id']!r}: it is {run['status']}",
            run_status=run["status"],
        )


def workflow_diff(current: dict[str, Any], operations: Any) -> dict[str, Any]:
    """What `operations` change in `current`, by node and edge (materialized as the
    coordinator materializes a run's patches)."""
    try:
        patched = materialize(current, [operations], limits=DEFAULT_PATCH_LIMITS)
    except PatchReplayError as error:
        return {"applies": False, "problem": str(error)}
    before, after = _nodes(current), _nodes(patched)
    old_edges, new_edges = _edges(current), _edges(patched)
    return {
        "applies": True,
        "added_nodes": [after[n] for n in after if n not in before],
        "removed_nodes": [n for n in before if n not in after],
        "changed_nodes": [
            {"id": n, "before": before[n], "after": after[n]}
            for n in after
            if n in before and before[n] != after[n]
        ],
        "added_edges": [e for e in new_edges if e not in old_edges],
        "removed_edges": [e for e in old_edges if e not in new_edges],
        "other_changes": sorted(
            k
            for k in {*current, *patched}
            if k not in ("nodes", "edges") and current.get(k) != patched.get(k)
        ),
    }


def _nodes(definition: dict[str, Any]) -> dict[str, Any]:
    nodes = definition.get("nodes")
    return {
        n["id"]: n
        for n in (nodes if isinstance(nodes, list) else [])
        if isinstance(n, dict) and isinstance(n.get("id"), str)
    }


def _edges(definition: dict[str, Any]) -> list[Any]:
    edges = definition.get("edges")
    return list(edges) if isinstance(edges, list) else []
