"""Tenant regexes on RE2: matching is linear in the text, whatever the pattern.

Python's `re` backtracks, so `(a+)+$` over 40 characters runs for minutes; RE2 has no
backtracking and refuses the features that need it (backreferences, lookaround).
"""

from __future__ import annotations

import functools
from typing import Any

import re2

MAX_PATTERN_LENGTH = 1000
# RE2 refuses patterns whose compiled program would need more memory than this.
MAX_PROGRAM_MEMORY = 8 * 1024 * 1024
# Instructions in a compiled program: bounds the work per character of input.
MAX_PROGRAM_SIZE = 100_000


class RegexError(ValueError):
    """A pattern is too long, too big, or uses what RE2 does not support."""


def _options() -> Any:
    options = re2.Options()
    options.max_mem = MAX_PROGRAM_MEMORY
    options.log_errors = False  # our error names the problem; no stderr noise per pattern
    return options


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> Any:
    """The compiled RE2 pattern (an object with `re`'s search/finditer/match API)."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise RegexError(f"pattern longer than {MAX_PATTERN_LENGTH} characters")
    try:
        regex = re2.compile(pattern, _options())
    except re2.error as error:
        raise RegexError(f"invalid pattern for RE2 ({_reason(error)}); {_HINT}") from None
    if regex.programsize > MAX_PROGRAM_SIZE:
        raise RegexError(f"pattern too large (compiles to over {MAX_PROGRAM_SIZE} instructions)")
    return regex


_HINT = "backreferences and lookaround are not supported (linear-time engine)"


def _reason(error: Exception) -> str:
    reason = error.args[0] if error.args else error
    return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
