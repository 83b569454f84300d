"""The single writer of workflow versions and tags: one per `aob.workflows` partition.

Versions and tag moves are decisions that need the current state (the latest version,
the tag's target and owner), so only one writer may make them per workflow id and per
tag. The API does not decide: it appends a request (`WorkflowCreateRequested` keyed by
workflow id, `TagMoveRequested` keyed by tag) and waits for the decision
(`wait_for_decision`). The `WorkflowDecider` that owns the request's partition decides
it in log order and appends the decision to the same partition, the request's event id
as its `causation_id`:

- `WorkflowCreateRequested` -> `WorkflowCreated` with the next version, and, when it
  names a tag, a `TagMoveRequested` for that version (keyed by tag: the tag's own
  writer decides the move), or the `TagMoved` at once when the tag's partition is this
  one (the default tag, the workflow's name, always is);
- `TagMoveRequested` -> `TagMoved`, with the target it replaces;
- either -> `WorkflowRequestRefused` when the name belongs to another tenant.

Decisions get ids derived from their request's, so a decision made twice (a crash
between append and commit) is one event to every consumer.

State: per owned partition, a `WorkflowRegistry` (pure, no I/O). On assignment the
decider folds the partition's decisions from offset 0 to its end (workflow events are
few: one per version and tag move) and notes which requests they decided; the
consumer then resumes at the group's committed offset and decides only the requests
no decision answers yet. A partition revoked is forgotten.

Deciders are members of the consumer group `aob-workflow-decider` (one per projector
process): they share the partitions, one owner each. A member's decisions are
committed with its offsets, per request partition, and fenced: once the partition went
to another member, the commit raises `Fenced` and appends nothing (the new owner
decides those requests from the committed offset on).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Final

from aob.events.codec import decode, encode
from aob.events.ids import derived_event_id
from aob.events.log.consumer import Consumer
from aob.events.log.port import Append, EventLog, Fenced, Record, TopicPartition
from aob.events.partitioner import partition_for
from aob.events.types import (
    WORKFLOWS_TOPIC,
    Event,
    Payload,
    TagMoved,
    TagMoveRequested,
    WorkflowCreated,
    WorkflowCreateRequested,
    WorkflowRequestRefused,
)
from aob.projections.readmodels.views import DEFAULT_TENANT

log = logging.getLogger(__name__)

GROUP: Final = "aob-workflow-decider"
REQUESTS: Final = (WorkflowCreateRequested, TagMoveRequested)
DECISIONS: Final = (WorkflowCreated, TagMoved, WorkflowRequestRefused)
_RESTORE_BATCH: Final = 500
_RECHECK: Final = 0.1  # s


class NoDecision(TimeoutError):
    """No decider answered a request in time (none runs, or it is far behind)."""


# --- the pure part: state and decisions ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Latest:
    version: int
    owner: str  # the tenant whose name this is


@dataclass(frozen=True, slots=True)
class _Target:
    workflow_id: str
    version: int
    owner: str


def _nothing(key: str) -> bool:
    return False


@dataclass
class WorkflowRegistry:
    """What one partition's writer knows: latest versions and tag targets, by name."""

    workflows: dict[str, _Latest] = field(default_factory=dict)
    tags: dict[str, _Target] = field(default_factory=dict)

    def fold(self, event: Event) -> None:
        """Take in a decision already in the log."""
        payload = event.payload
        if isinstance(payload, WorkflowCreated):
            known = self.workflows.get(payload.workflow_id)
            if known is None or payload.version > known.version:
                owner = known.owner if known else _owner(payload.tenant)
                self.workflows[payload.workflow_id] = _Latest(payload.version, owner)
        elif isinstance(payload, TagMoved):
            self.tags[payload.tag] = _Target(
                payload.workflow_id, payload.version, _owner(payload.tenant)
            )

    def decide(self, request: Event, holds: Callable[[str], bool] = _nothing) -> list[Event]:
        """The decisions answering `request` (already folded in). `holds(key)`: whether
        this registry's partition is also the one of `key` (a tag's)."""
        payload = request.payload
        if isinstance(payload, WorkflowCreateRequested):
            return self._create(request, payload, holds)
        if isinstance(payload, TagMoveRequested):
            return self._move(request, payload)
        return []

    def _create(
        self, request: Event, p: WorkflowCreateRequested, holds: Callable[[str], bool]
    ) -> list[Event]:
        latest = self.workflows.get(p.workflow_id)
        if latest is not None and not _may_use(latest.owner, p.tenant):
            return [_refused(request, "workflow id", p.workflow_id)]
        version = latest.version + 1 if latest else 1
        created = _decision(
            request, "created", WorkflowCreated(p.workflow_id, version, p.definition, p.tenant)
        )
        self.fold(created)
        if not p.tag:
            return [created]
        wanted = TagMoveRequested(p.tag, p.workflow_id, version, p.tenant)
        move = _decision(request, "tag", wanted, key=p.tag)
        if holds(p.tag):  # the tag's writer is this one: decide the move at once
            return [created, *self._move(move, wanted)]
        return [created, move]

    def _move(self, request: Event, p: TagMoveRequested) -> list[Event]:
        previous = self.tags.get(p.tag)
        if previous is not None and not _may_use(previous.owner, p.tenant):
            return [_refused(request, "tag", p.tag)]
        moved = TagMoved(
            p.tag,
            p.workflow_id,
            p.version,
            previous.workflow_id if previous else None,
            previous.version if previous else None,
            tenant=p.tenant,
        )
        decision = _decision(request, "moved", moved)
        self.fold(decision)
        return [decision]


def tag_request_id(create_request_id: str) -> str:
    """The id of the `TagMoveRequested` a workflow creation with a tag leads to."""
    return derived_event_id(create_request_id, "tag")


def _owner(tenant: str | None) -> str:
    return tenant or DEFAULT_TENANT


def _may_use(owner: str, tenant: str | None) -> bool:
    """Ids and tag names are unique across tenants (None: a caller that sees all)."""
    return tenant is None or owner == tenant


def _decision(request: Event, what: str, payload: Payload, *, key: str | None = None) -> Event:
    # The request's time and trace: the fold reads no clock, and a replay decides alike.
    return Event(
        derived_event_id(request.event_id, what),
        request.key if key is None else key,
        request.occurred_at,
        payload,
        request.trace_id,
        request.event_id,
        request.actor,
    )


def _refused(request: Event, subject: str, name: str) -> Event:
    refusal = WorkflowRequestRefused(request.event_id, "name-taken", subject, name)
    return _decision(request, "refused", refusal)


# --- the host -------------------------------------------------------------------------


class WorkflowDecider:
    """Decides the requests of the `aob.workflows` partitions it owns (a consumer-group
    member: `on_assigned` / `on_revoked`; without a group it owns them all)."""

    def __init__(self, event_log: EventLog, *, max_records: int = 500) -> None:
        self.log = event_log
        self.consumer = Consumer(
            event_log, GROUP, (WORKFLOWS_TOPIC,), max_records=max_records, listener=self
        )
        self._registries: dict[TopicPartition, WorkflowRegistry] = {}
        # Per owned partition, the requests its log answered when it was restored (the
        # consumer may read them again from the group's committed offset).
        self._answered: dict[TopicPartition, set[str]] = {}
        self._partitions = 1  # of aob.workflows, known once a partition is assigned

    async def start(self) -> None:
        """Join the group: the partitions it assigns are restored before this returns."""
        await self.consumer.start()

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        for tp in sorted(partitions, key=lambda tp: tp.partition):
            if tp not in self._registries:
                await self._restore(tp)

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        for tp in partitions:
            self._registries.pop(tp, None)
            self._answered.pop(tp, None)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.step(timeout=0.5)
        finally:  # leave the group: another member takes the partitions over at once
            await self.consumer.close()

    async def step(self, timeout: float = 0.0) -> int:
        """Decide the requests there are to read now; returns how many records were read."""
        records = await self.consumer.poll(timeout=timeout)
        if not records:
            return 0
        # Decisions go with the partition of their request: fenced with it.
        appends: dict[TopicPartition, list[Append]] = {}
        for record in records:
            decided = self._decide(record)
            appends.setdefault(record.position, []).extend(
                Append(WORKFLOWS_TOPIC, event.key, encode(event)) for event in decided
            )
        try:
            await self.consumer.commit(appends)
        except Fenced as error:  # a new owner decides the lost partitions' requests
            log.warning("workflow decider lost a partition before deciding: %s", error)
            await self._recover(records)
        return len(records)

    async def _recover(self, records: list[Record]) -> None:
        """After a fenced commit: forget the batch's partitions (their states hold
        decisions that may not be in the log); those still owned are restored and read
        again from the batch's first record."""
        first: dict[TopicPartition, int] = {}
        for record in records:
            first.setdefault(record.position, record.offset)
        owned = self.consumer.assignment
        for tp, offset in first.items():
            await self.on_revoked(frozenset({tp}))
            if tp in owned:
                await self._restore(tp)
                self.consumer.seek(tp, offset)

    def _decide(self, record: Record) -> list[Event]:
        registry = self._registries.get(record.position)
        if registry is None:
            return []  # revoked since it was read
        event = _decoded(record)
        if event is None or not isinstance(event.payload, REQUESTS):
            return []  # a decision: folded at restore, or made (and folded) here
        if event.event_id in self._answered[record.position]:
            return []  # decided before this host restored the partition
        count = self._partitions
        return registry.decide(event, lambda key: partition_for(key, count) == record.partition)

    async def _restore(self, tp: TopicPartition) -> None:
        """Fold the partition's decisions up to its end, noting the requests they answer."""
        registry = WorkflowRegistry()
        answered: set[str] = set()
        self._partitions = await self.log.partitions(tp.topic)
        end = (await self.log.end_offsets(tp.topic)).get(tp.partition, 0)
        offset = 0
        while offset < end:
            batch = await self.log.read(tp.topic, tp.partition, offset, _RESTORE_BATCH)
            if not batch:
                break
            for record in batch:
                event = _decoded(record)
                if event is not None and isinstance(event.payload, DECISIONS):
                    registry.fold(event)
                    if event.causation_id is not None:
                        answered.add(event.causation_id)
            offset = batch[-1].offset + 1
        self._registries[tp] = registry
        self._answered[tp] = answered
        log.info("workflow decider owns %s[%d]: %d records folded", tp.topic, tp.partition, offset)


def _decoded(record: Record) -> Event | None:
    """The record's event; None for one nobody can read (the projector sets it aside)."""
    try:
        return decode(record.value)
    except Exception as error:
        log.warning(
            "skipped an undecodable record at %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            error,
        )
        return None


# --- what a requester uses --------------------------------------------------------------


async def wait_for_decision(
    event_log: EventLog,
    tp: TopicPartition,
    after: int,
    request_id: str,
    answers: Collection[type[object]],
    timeout: float,
) -> tuple[Record, Event]:
    """The first record of `tp` from offset `after` on that answers `request_id` (its
    causation) with an event of one of the `answers` types; raises NoDecision."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    offset = after
    while True:
        batch = await event_log.read(tp.topic, tp.partition, offset)
        found = _answer(batch, request_id, tuple(answers))
        if found is not None:
            return found
        if batch:
            offset = batch[-1].offset + 1
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise NoDecision(f"no decision on request {request_id} within {timeout:.0f}s")
        # A log handle wakes for the appends it sees; another handle's on one embedded
        # file may go unnoticed, so look again now and then.
        await event_log.wait_for_append(min(remaining, _RECHECK))


def _answer(
    records: Iterable[Record], request_id: str, answers: tuple[type[object], ...]
) -> tuple[Record, Event] | None:
    for record in records:
        event = _decoded(record)
        if (
            event is not None
            and event.causation_id == request_id
            and isinstance(event.payload, answers)
        ):
            return record, event
    return None
