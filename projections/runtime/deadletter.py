"""Poison is set aside, not obeyed: what every consumer host appends for a record it
cannot decode, fold, project or handle.

`dead_letter(record, service, reason)` builds two appends: the record itself, with the
reason, on `aob.deadletter` (an admin inspects and replays it: /api/v1/admin/
deadletters), and a `RunFailed` for the run it belongs to, where that is known (the key
of a record on `aob.runs` or `aob.tasks.*` is its run id). The host appends both with
its offsets, so it moves past the record and every other run goes on.

Ids derive from (service, topic, partition, offset): a host that sets the same record
aside again after a crash appends the same events, which the fold (a finished run
ignores later events) and the dead-letter listing (one entry per id) absorb.
"""

from __future__ import annotations

import time
from typing import Final

from aob.events.codec import encode, event_type
from aob.events.ids import derived_event_id
from aob.events.log.port import Append, Record
from aob.events.types import (
    DEADLETTER_TOPIC,
    EXPRESSIONS_TOPIC,
    RUNS_TOPIC,
    TASKS_TOPIC_PREFIX,
    Event,
    RecordDeadLettered,
    RunFailed,
)

# Reasons are exception texts, which may quote the data: keep the events small.
MAX_REASON_CHARS: Final = 1000
UNDECODABLE: Final = "undecodable record"


def run_of(record: Record) -> str | None:
    """The run `record` belongs to: its key, on the topics keyed by run id."""
    keyed_by_run = record.topic in (RUNS_TOPIC, EXPRESSIONS_TOPIC) or record.topic.startswith(
        TASKS_TOPIC_PREFIX
    )
    return record.key if keyed_by_run and record.key else None


def describe(error: BaseException) -> str:
    """An exception as one short line: its type and message."""
    text = str(error).replace("\n", " ").strip()
    return short(f"{type(error).__name__}: {text}" if text else type(error).__name__)


def short(text: str) -> str:
    if len(text) <= MAX_REASON_CHARS:
        return text
    return text[: MAX_REASON_CHARS - 14] + " ...(truncated)"


def dead_letter_id(service: str, record: Record) -> str:
    """The id of the dead letter `service` writes for `record` (the same every time)."""
    return derived_event_id(
        f"{service}@{record.topic}/{record.partition}@{record.offset}", "dead-letter"
    )


def dead_letter(
    record: Record,
    service: str,
    reason: str,
    *,
    what: str = UNDECODABLE,
    fail_run: bool = True,
) -> list[Append]:
    """Set `record` aside: the dead letter, and (if `fail_run` and its run is known) the
    run's failure. `what` names the record: its event type when it decoded. A
    `RunFailed` that is itself poison fails nothing more (no endless loop)."""
    reason = short(reason)
    run_id = run_of(record)
    at = time.time_ns() // 1_000_000
    letter_id = dead_letter_id(service, record)
    letter = Event(
        event_id=letter_id,
        key=record.key,
        occurred_at=at,
        payload=RecordDeadLettered(
            service=service,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=bytes(record.value),
            reason=reason,
            run_id=run_id,
        ),
        actor=f"service:{service}",
    )
    appends = [Append(DEADLETTER_TOPIC, record.key, encode(letter))]
    if fail_run and run_id is not None and event_type(record.value) != "RunFailed":
        error = (
            f"{service} could not process {what} at {record.topic}/{record.partition}"
            f"@{record.offset}: {reason}; set aside as dead letter"
        )
        failed = Event(
            event_id=derived_event_id(letter_id, "run-failed"),
            key=run_id,
            occurred_at=at,
            payload=RunFailed(run_id, error),
            causation_id=letter_id,
            actor=f"service:{service}",
        )
        appends.append(Append(RUNS_TOPIC, run_id, encode(failed)))
    return appends
