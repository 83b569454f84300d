"""Records finished past a committed offset, and how a commit carries them.

A host that finishes records out of order (a worker: one slow task, quick ones after
it) can commit its offset only up to its first unfinished record. Without more, the
partition's next owner (after a crash or a rebalance) would execute the quick ones
again, whose outcomes are in the log already: an HTTP call sent twice. So a commit
also names the ranges of records finished past its offset (Kafka keeps them in the
offset's metadata; the embedded log in a column), and the next owner's `poll` skips
them. The same is how Confluent's parallel consumer keeps its offset map.

Bounded: the text is cut to `MAX_TEXT` characters (Kafka refuses metadata past
`offset.metadata.max.bytes`, 4096 by default), keeping the earliest ranges; a range
cut off is executed again, as before. Text that does not parse skips nothing: a
malformed record of the offsets topic never makes work disappear.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Final

from aob.events.log.port import Record

log = logging.getLogger(__name__)

# Finished ranges, half-open and ascending: `range(start, stop)`.
DoneAhead = tuple[range, ...]

MAX_TEXT: Final = 2048
_PREFIX: Final = "done:"
_RANGE: Final = re.compile(r"(\d{1,19})-(\d{1,19})")


def encode(done: Iterable[range]) -> str:
    """`done` as commit metadata ("" when empty), its earliest ranges up to `MAX_TEXT`."""
    text = _PREFIX
    for span in normalized(done):
        part = f"{span.start}-{span.stop},"
        if len(text) + len(part) > MAX_TEXT:
            break
        text += part
    return "" if text == _PREFIX else text.rstrip(",")


def decode(text: str | None) -> DoneAhead:
    """The ranges `encode` wrote; () for no text, or text that is not what it writes."""
    if not text or not text.startswith(_PREFIX) or len(text) > MAX_TEXT:
        return ()
    spans: list[range] = []
    for part in text[len(_PREFIX) :].split(","):
        matched = _RANGE.fullmatch(part)
        if matched is None or int(matched[1]) >= int(matched[2]):
            log.warning("ignored commit metadata that is not a list of done ranges: %.80r", text)
            return ()
        spans.append(range(int(matched[1]), int(matched[2])))
    return normalized(spans)


def normalized(done: Iterable[range]) -> DoneAhead:
    """Ascending, non-empty, overlapping or touching ranges merged."""
    merged: list[range] = []
    for span in sorted((s for s in done if s), key=lambda s: s.start):
        if merged and span.start <= merged[-1].stop:
            last = merged.pop()
            span = range(last.start, max(last.stop, span.stop))
        merged.append(span)
    return tuple(merged)


def from_position(done: DoneAhead, position: int) -> DoneAhead:
    """What of `done` lies at or past `position` (what a member has not read yet)."""
    return tuple(range(max(s.start, position), s.stop) for s in done if s.stop > position)


def gaps(unfinished: Iterable[int], position: int) -> DoneAhead:
    """The records finished past the lowest of `unfinished`: those below `position`
    (read so far) that are not unfinished."""
    marks = sorted(set(unfinished))
    if not marks:
        return ()
    return normalized(range(a + 1, b) for a, b in zip(marks, [*marks[1:], position], strict=True))


def without_done(records: Sequence[Record], done: DoneAhead) -> list[Record]:
    """`records` (of one partition) but those `done` names."""
    if not done:
        return list(records)
    return [r for r in records if not any(r.offset in span for span in done)]


def read_past(
    records: Sequence[Record], done: DoneAhead, position: int
) -> tuple[list[Record], DoneAhead]:
    """A member's read of one partition up to `position`: the records `done` does not
    name, and what of `done` lies ahead still."""
    return without_done(records, done), from_position(done, position)


def carried(given: Iterable[range], inherited: DoneAhead) -> str:
    """A commit's text: the ranges its host finished, and those a member inherited from
    the partition's last owner and has not read yet."""
    return encode([*given, *inherited])
