"""Event ids: random for new facts from outside, derived for decisions.

A decision's id is derived from the id of the event that caused it, so re-making
the same decision after a crash yields the same id, and consumers drop it as a
duplicate.
"""

from __future__ import annotations

import uuid
from hashlib import blake2b


def new_event_id() -> str:
    return str(uuid.uuid4())


def derived_event_id(cause_id: str, index: int | str) -> str:
    """A stable id for the `index`-th event emitted in reaction to `cause_id`."""
    digest = blake2b(f"{cause_id}/{index}".encode(), digest_size=16).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"
