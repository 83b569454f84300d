"""The sandbox's wire format and the helpers both sides share (standard library only).

A frame is a 4-byte big-endian length and that many bytes. A request is
`[program, all, max_outputs]` as JSON, a newline, then the input as JSON text (the
child hands that text to jq as is). A reply is JSON: `{"ok": [outputs...]}` or
`{"error": message, "budget": null | "memory" | "output"}`; the first frame a child
sends is `{"ready": true}`.
"""

from __future__ import annotations

import itertools
import struct

HEADER = struct.Struct(">I")
# A frame longer than this is a protocol error (replies are bounded by the output budget).
MAX_FRAME = 1 << 30
FIRST, ALL = 0, 1

_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# Outside string literals JSON is ASCII: keep only the brackets.
_KEEP_BRACKETS = str.maketrans({c: None for c in map(chr, range(128)) if c not in "[]{}"})


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def deeper_than(text: str, limit: int) -> bool:
    """Whether the JSON `text` nests more than `limit` arrays/objects deep.

    Cheap in the common case: fewer opening brackets than `limit` cannot nest deeper.
    Otherwise strings are cut out and the bracket walk runs in C (accumulate).
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    # Quotes inside strings are escaped, so the text splits into code/string parts.
    code = "".join(_unquoted(text)).translate(_KEEP_BRACKETS)
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, code)), default=0) > limit


def _unquoted(text: str) -> list[str]:
    """The parts of JSON `text` outside string literals."""
    parts = text.replace("\\\\", "").replace('\\"', "").split('"')
    return parts[::2]
