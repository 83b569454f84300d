"""The `Idempotency-Key` header every http node request carries.

Workers are at-least-once: a task whose worker died before its outcome was appended is
executed again by another worker. The key lets the receiver recognise that second
delivery: it is derived from (run, node, iteration, attempt) alone, so every execution
of one task sends the same key, while a new node attempt (the coordinator's retry
policy) or a new loop iteration sends a new one. The worker's own retries of a request
within one attempt, and each redirect hop, repeat the attempt's key.

The header name and its value's form (a Structured Field String, quoted) follow
draft-ietf-httpapi-idempotency-key-header. The node cannot set or remove it: the name
is reserved in `config.RESERVED_HEADERS`.
"""

from __future__ import annotations

import json
from hashlib import blake2b

from aob.events.types import NodeScheduled

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Part of the hashed text, so a key never equals an event id derived from the same parts.
_PURPOSE = "aob.http.idempotency-key/v1"


def idempotency_key(task: NodeScheduled) -> str:
    """The key of one node attempt: 32 hex digits, UUID-shaped, the same on every worker."""
    # JSON keeps the parts apart whatever characters a run or node id holds.
    parts = json.dumps([_PURPOSE, task.run_id, task.node_id, task.iteration, task.attempt])
    digest = blake2b(parts.encode(), digest_size=16).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


def idempotency_header(task: NodeScheduled) -> tuple[str, str]:
    """The header as sent: the key as a Structured Field String (in double quotes)."""
    return IDEMPOTENCY_HEADER, f'"{idempotency_key(task)}"'
