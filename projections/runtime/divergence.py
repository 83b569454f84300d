"""Recovery checks the fold against the log: what it emits again must be what was recorded.

A coordinator that takes a partition over folds again the events between its changelog
marker and the committed offset (`CoordinatorHost.restore`). What the fold emitted for
them was appended when they were first folded, in the same commit as the offsets, so
it is in the log after them: the same ids (derived from the cause's) with the same
payloads. If the fold now emits something else (a code change altered its decisions,
or the log was tampered with), the states it rebuilt are not the ones the log stands
for, and carrying on would let those runs silently diverge. `refold_checked` compares,
event by event, and raises `RecoveryDiverged` naming the run and the first event that
differs: the host dies loudly instead.

Differences found:
- an event the fold emits again whose recorded payload differs (same id);
- an event the fold emits again that the log never recorded after its cause;
- an event the log recorded as the fold's reaction to a re-folded event (its
  `causation_id`) that the fold no longer emits.

Runs the coordinator set aside (a dead letter's `RunFailed`, or a state it could not
store) are left out: their fold was cut short on purpose, so what it recorded is partial.

`FoldAudit` applies the same comparison to a whole partition from offset 0 (for
`aob server audit verify`), folding as the host does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

from aob.events.codec import as_logged, decode
from aob.events.log.port import EventLog, Record, TopicPartition
from aob.events.types import Event, RunFailed
from aob.projections.coordinator.fold import fold
from aob.projections.coordinator.state import RunState
from aob.projections.runtime.inline import Inline, decide

FOLD_ACTOR = "coordinator"  # the actor of every event the fold emits
READ_BATCH = 1000


@dataclass(frozen=True)
class Refolded:
    """One event folded again: what the fold emitted, and whether the run's state had
    not seen it yet (a duplicate emits nothing, and is not compared)."""

    event: Event
    emitted: list[Event]
    fresh: bool


@dataclass(frozen=True)
class Divergence:
    """The first place where the fold and the log disagree about a run."""

    run_id: str
    event_id: str  # the event emitted or recorded that differs
    event_type: str
    cause_id: str  # the event whose fold led to it
    detail: str
    where: str  # where in the log the comparison was made (topic[partition]@offset)

    def __str__(self) -> str:
        return (
            f"run {self.run_id}: event {self.event_id} ({self.event_type}, caused by "
            f"{self.cause_id}) {self.detail} (at {self.where})"
        )


class RecoveryDiverged(RuntimeError):
    """The fold re-emits something the log did not record: recovery must not go on."""

    def __init__(self, divergence: Divergence) -> None:
        super().__init__(
            f"recovery stopped: the fold diverges from the log: {divergence}; the code "
            "folding aob.runs changed what it decides for events already processed"
        )
        self.divergence = divergence


@dataclass
class EmissionCheck:
    """Compares what the fold emitted for re-folded events with the events recorded
    after them. Feed each record read as `recorded` (before folding it) and each fold
    as `refolded`; `finish` reports what was emitted but never met."""

    set_aside_by: str  # the actor of the coordinator's own RunFailed (set-aside runs)
    expected: dict[str, tuple[Event, str]] = field(default_factory=dict)  # id -> (event, cause)
    emitted_for: dict[str, set[str]] = field(default_factory=dict)  # fresh cause -> ids
    set_aside: set[str] = field(default_factory=set)  # runs the coordinator failed itself
    first: Divergence | None = None

    @property
    def waiting(self) -> bool:
        """Emitted events not met in the log yet (they may lie past the end folded)."""
        return any(self._counts(event.key) for event, _ in self.expected.values())

    def recorded(self, event: Event, where: str) -> None:
        if event.actor == self.set_aside_by and isinstance(event.payload, RunFailed):
            self.set_aside.add(event.key)
        pending = self.expected.pop(event.event_id, None)
        if pending is not None:
            emitted, cause = pending
            detail = _difference(emitted, event)
            if detail is not None:
                self._found(emitted.key, emitted, cause, detail, where)
            return
        caused_by = event.causation_id
        if event.actor != FOLD_ACTOR or caused_by is None or caused_by not in self.emitted_for:
            return
        if event.event_id not in self.emitted_for[caused_by]:
            detail = f"was recorded as the fold's ({_brief(event)}) but the fold no longer emits it"
            self._found(event.key, event, caused_by, detail, where)

    def refolded(self, refolded: Refolded) -> None:
        if not refolded.fresh:
            return
        cause = refolded.event.event_id
        self.emitted_for[cause] = {e.event_id for e in refolded.emitted}
        for emitted in refolded.emitted:
            self.expected[emitted.event_id] = (emitted, cause)

    def finish(self, where: str) -> Divergence | None:
        """The first divergence found, or an emitted event the log never recorded."""
        for emitted, cause in self.expected.values():
            if self._counts(emitted.key):
                detail = f"is emitted again ({_brief(emitted)}) but the log never recorded it"
                self._found(emitted.key, emitted, cause, detail, where)
        return self.first

    def _counts(self, run_id: str) -> bool:
        return run_id not in self.set_aside

    def _found(self, run_id: str, event: Event, cause: str, detail: str, where: str) -> None:
        if self.first is None and self._counts(run_id):
            self.first = Divergence(run_id, event.event_id, event.type, cause, detail, where)


def _difference(emitted: Event, recorded: Event) -> str | None:
    """How the payload the fold emits differs from the recorded one (None: equal),
    compared as the log holds them (through the codec: lists, not tuples)."""
    now, was = as_logged(emitted).payload, recorded.payload
    if now == was:
        return None
    if type(now) is not type(was):
        return (
            f"is re-emitted as {emitted.type} {_brief(emitted)} but the log recorded "
            f"{_brief(recorded)}"
        )
    for name in (f.name for f in fields(now)):
        old, new = getattr(was, name), getattr(now, name)
        if old != new:
            return (
                f"differs from what the log recorded in {name}: recorded {_short(old)}, "
                f"the fold now emits {_short(new)}"
            )
    return f"differs from what the log recorded: {_brief(recorded)}"


def _short(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _brief(event: Event) -> str:
    return _short(event.payload, 300)


def _where(tp: TopicPartition, offset: int) -> str:
    return f"{tp.topic}[{tp.partition}]@{offset}"


async def refold_checked(
    event_log: EventLog,
    tp: TopicPartition,
    start: int,
    end: int,
    refold: Callable[[Record], Refolded | None],
    *,
    set_aside_by: str,
) -> Divergence | None:
    """Fold `tp` from `start` to `end` again with `refold` (None: a poison record), and
    compare what it emits with what the log recorded; read on past `end` while emitted
    events are still to be met (a batch's are appended after it). The first divergence,
    or None."""
    check = EmissionCheck(set_aside_by)
    offset = start
    while offset < end or check.waiting:
        records = await event_log.read(tp.topic, tp.partition, offset, READ_BATCH)
        if not records:
            break  # the end of the log: what is still expected was never recorded
        for record in records:
            _compare(check, record, tp)
            if record.offset < end:
                refolded = refold(record)
                if refolded is not None:
                    check.refolded(refolded)
            elif not check.waiting:
                break
        offset = records[-1].offset + 1
    return check.finish(_where(tp, offset))


def _compare(check: EmissionCheck, record: Record, tp: TopicPartition) -> None:
    try:
        event = decode(record.value)
    except Exception:
        return  # poison: set aside when it was first read, its run failed
    check.recorded(event, _where(tp, record.offset))


def fresh_cause(known: bool | None, emitted: list[Event]) -> bool:
    """Whether what the log recorded in reaction to an event can be checked against
    what its fold `emitted`, by whether the run's state had seen it before the fold
    (`known`; None: there was no state). An event of a run the fold does not know (it
    ended, or ended before the stretch folded again) changes nothing, unless it starts
    the run: the records of answers decided in process for a run that ended are such
    events, and their recorded reactions were checked with their cause."""
    if known is None:
        return bool(emitted)
    return not known


def seen_before(state: RunState | None, event: Event) -> bool | None:
    """Whether `state` has seen `event` (None: no state); ask before folding it."""
    return None if state is None else event.event_id in state.seen


@dataclass
class FoldAudit:
    """Folds one partition of aob.runs from offset 0 as the coordinator host does
    (finished runs leave memory, a fold that raises drops its run) and compares what
    the fold emits with what the log recorded."""

    set_aside_by: str
    # The work the host decides in process (`runtime.inline`): decided again here.
    inline: Inline | None = None
    states: dict[str, RunState] = field(default_factory=dict)

    def refold(self, record: Record) -> Refolded | None:
        try:
            event = decode(record.value)
        except Exception:
            return None
        known = seen_before(self.states.get(event.key), event)
        try:
            emitted, _ = decide(event, self._fold, self.inline)
        except Exception:
            self.states.pop(event.key, None)
            return None
        return Refolded(event, emitted, fresh_cause(known, emitted))

    def _fold(self, event: Event) -> list[Event]:
        state, emitted = fold(self.states.get(event.key), event)
        if state is None or state.is_finished:
            self.states.pop(event.key, None)
        else:
            self.states[event.key] = state
        return emitted


async def audit_partition(
    event_log: EventLog,
    tp: TopicPartition,
    end: int,
    *,
    set_aside_by: str,
    inline: Inline | None = None,
) -> Divergence | None:
    """The first divergence between the fold and the log in `tp`, folding it from 0
    to `end` (the coordinator's committed offset: what it has processed) with the
    work its host decides in process."""
    audit = FoldAudit(set_aside_by, inline)
    return await refold_checked(event_log, tp, 0, end, audit.refold, set_aside_by=set_aside_by)
