"""Event and run ids: time-ordered for new facts from outside, derived for decisions.

A decision's id is derived from the id of the event that caused it, so re-making
the same decision after a crash yields the same id, and consumers drop it as a
duplicate.

New ids begin with the time they were made (milliseconds since the epoch, as 12 hex
digits): a new event id is a UUIDv7 written as 32 hex digits, a run id `run_` and 28,
and an id derived from a time-ordered one keeps its cause's 12-digit time and adds 20
of a hash. Ids made together sort together, so the indexes that hold them (the read
models' primary keys, their event-id and run-id indexes) grow at their right edge.
Random ids sent each insert to a random page of each index: once an index outgrew the
cache, every commit wrote (and checkpointed) a page per id, and the embedded engine's
writes grew from 116 to 384 KB per run over its first 5,000 runs, its throughput
falling by a third (`python -m bench.sustained` measures it).

Ids from before (36-character UUIDs with dashes) are never time-ordered, and derive as
they always did: a decision re-made after an upgrade gets the id it had.
"""

from __future__ import annotations

import re
import secrets
import time
from hashlib import blake2b

# What `new_event_id` and `derived_event_id` make; no id from before has this form.
TIME_ORDERED_EVENT_ID = re.compile(r"[0-9a-f]{32}")
_TIME_DIGITS = 12  # hex digits of the millisecond time that begins a time-ordered id
_RANDOM_BITS_V7 = 74  # UUIDv7's random bits (its other 6 are version and variant)


def _now_prefix() -> str:
    """The current time as the 12 hex digits that begin a time-ordered id."""
    return f"{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}"


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562: time, version, variant, random) as 32 hex digits."""
    random = secrets.randbits(_RANDOM_BITS_V7)
    low_62 = random & ((1 << 62) - 1)
    value = (0x7 << 76) | ((random >> 62) << 64) | (0b10 << 62) | low_62
    return _now_prefix() + f"{value:020x}"


def new_run_id() -> str:
    """`run_`, the time, and 64 random bits (runs of one millisecond do not collide in
    practice)."""
    return "run_" + _now_prefix() + secrets.token_hex(8)


def derived_event_id(cause_id: str, index: int | str) -> str:
    """A stable id for the `index`-th event emitted in reaction to `cause_id`."""
    if TIME_ORDERED_EVENT_ID.fullmatch(cause_id):
        digest = blake2b(f"{cause_id}/{index}".encode(), digest_size=10).hexdigest()
        return cause_id[:_TIME_DIGITS] + digest
    digest = blake2b(f"{cause_id}/{index}".encode(), digest_size=16).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"
