"""Golden run histories: recorded runs of the coordinator fold, replayed in CI.

Each `<name>.json` here is one run's log as the simulated world around the fold
(tests/coordinator/simulate.py) recorded it, written by `generate.py`. An event is
the fold's own when its actor is "coordinator" (the fold stamps every event it
emits so); every other one is an input: a submission, a worker's answer, a fired
timer, a decision, a patch, a review, a verdict.

`replay` feeds a history's inputs to the current fold, in order, and checks that
the fold emits exactly the recorded fold events after each one: same ids, same
payloads, same envelope, same order. A change to the fold that alters recorded
behaviour is then found, named by run and by the first event that differs; if the
change is meant, regenerate (`generate.py --force`) and review the diff.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aob.events.types import PAYLOAD_BY_NAME, Event
from aob.projections.coordinator.fold import fold
from aob.projections.coordinator.state import RunState

HERE = Path(__file__).parent
FOLD_ACTOR = "coordinator"  # the actor of every event the fold emits
# Marks an input that landed in the log between an earlier event and the fold's answer
# to it (a race, e.g. a person's decision right after a signal): the fold's due events
# follow it in the history.
RACED = "raced"


def event_to_json(event: Event) -> dict[str, Any]:
    """An event as a readable JSON object (envelope fields left out at their defaults)."""
    out: dict[str, Any] = {
        "id": event.event_id,
        "type": event.type,
        "at": event.occurred_at,
        "actor": event.actor,
    }
    if event.key != _run_id(event):
        out["key"] = event.key
    if event.causation_id is not None:
        out["causation"] = event.causation_id
    if event.trace_id:
        out["trace"] = event.trace_id
    out["data"] = dataclasses.asdict(event.payload)
    # Lists for tuples, as JSON reads them back: the two sides compare equal.
    normalised: dict[str, Any] = json.loads(json.dumps(out))
    return normalised


def event_from_json(data: dict[str, Any]) -> Event:
    payload = PAYLOAD_BY_NAME[data["type"]](**data["data"])
    return Event(
        event_id=data["id"],
        key=data.get("key", data["data"].get("run_id", "")),
        occurred_at=data["at"],
        payload=payload,
        trace_id=data.get("trace", ""),
        causation_id=data.get("causation"),
        actor=data["actor"],
    )


def _run_id(event: Event) -> str | None:
    run_id = getattr(event.payload, "run_id", None)
    return run_id if isinstance(run_id, str) else None


@dataclass(frozen=True)
class GoldenRun:
    name: str
    description: str
    events: list[dict[str, Any]]  # the log, in order, as event_to_json writes it

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "events": self.events}

    @staticmethod
    def load(path: Path) -> GoldenRun:
        data = json.loads(path.read_text(encoding="utf-8"))
        return GoldenRun(data["name"], data["description"], data["events"])


def golden_files() -> list[Path]:
    return sorted(HERE.glob("*.json"))


def is_fold_event(recorded: dict[str, Any]) -> bool:
    return bool(recorded["actor"] == FOLD_ACTOR)


@dataclass(frozen=True)
class Mismatch:
    """Where the current fold first departs from a recorded history."""

    run: str
    position: int  # index of the event in the history (the recorded one, or where it was due)
    recorded: dict[str, Any] | None  # None: the fold emits an event the history lacks
    emitted: dict[str, Any] | None  # None: the fold no longer emits the recorded event

    def __str__(self) -> str:
        head = f"golden run {self.run!r}, event #{self.position}"
        if self.emitted is None:
            assert self.recorded is not None
            return (
                f"{head}: the history records {_name(self.recorded)} from the fold, "
                f"which the fold no longer emits\n  recorded: {_dump(self.recorded)}"
            )
        if self.recorded is None:
            return (
                f"{head}: the fold now emits {_name(self.emitted)}, which the history "
                f"does not record\n  emitted:  {_dump(self.emitted)}"
            )
        where, was, now = first_difference(self.recorded, self.emitted)
        return (
            f"{head}: {_name(self.recorded)} differs at {where}: recorded {_dump(was)}, "
            f"the fold now emits {_dump(now)}\n  recorded: {_dump(self.recorded)}\n"
            f"  emitted:  {_dump(self.emitted)}"
        )


def _name(event: dict[str, Any]) -> str:
    return f"{event.get('type')} {event.get('id')}"


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def first_difference(recorded: Any, emitted: Any, path: str = "") -> tuple[str, Any, Any]:
    """The path of the first field that differs, and its two values."""
    if isinstance(recorded, dict) and isinstance(emitted, dict):
        for key in [*recorded, *(k for k in emitted if k not in recorded)]:
            if recorded.get(key, _ABSENT) != emitted.get(key, _ABSENT):
                return first_difference(
                    recorded.get(key, _ABSENT), emitted.get(key, _ABSENT), f"{path}.{key}"
                )
    if isinstance(recorded, list) and isinstance(emitted, list) and len(recorded) == len(emitted):
        for index, (was, now) in enumerate(zip(recorded, emitted, strict=True)):
            if was != now:
                return first_difference(was, now, f"{path}[{index}]")
    return path or ".", _shown(recorded), _shown(emitted)


_ABSENT: Any = object()


def _shown(value: Any) -> Any:
    return "(absent)" if value is _ABSENT else value


def replay(run: GoldenRun) -> Mismatch | None:
    """Feed the run's inputs to the fold; the first place its output departs from the
    recorded fold events, or None when it emits exactly them."""
    state: RunState | None = None
    due: deque[dict[str, Any]] = deque()  # emitted by the fold, not yet met in the log
    met: set[str] = set()  # ids of the fold's events met in the log
    for position, recorded in enumerate(run.events):
        if is_fold_event(recorded) and recorded["id"] in met:
            pass  # appended twice (as after a host crash): folded, changes nothing
        elif is_fold_event(recorded):
            if not due:
                return Mismatch(run.name, position, recorded, None)
            emitted = due.popleft()
            if emitted != recorded:
                return Mismatch(run.name, position, recorded, emitted)
            met.add(recorded["id"])
        elif due and not recorded.get(RACED):
            return Mismatch(run.name, position, None, due[0])
        # The log's own event is folded, as the coordinator host reads it back (the
        # fold's events are recognised by id and change nothing).
        state, emitted_now = fold(state, event_from_json(recorded))
        due.extend(event_to_json(e) for e in emitted_now)
    if due:
        return Mismatch(run.name, len(run.events), None, due[0])
    return None
