"""Reading the project's own source in tests."""

from __future__ import annotations

import ast
from pathlib import Path

_ATTEMPTS = 3


def parse_source(path: Path) -> ast.Module:
    """`ast.parse` of the file at `path`. CPython 3.11 keeps the AST builder's recursion
    depth in state every thread shares (python/cpython#106905): a module another thread
    compiles meanwhile (an import in a server thread an earlier test started) can make a
    parse fail with a depth mismatch SystemError. The text is the same, so parsing it
    again is exact."""
    text = path.read_text(encoding="utf-8")
    for _ in range(_ATTEMPTS - 1):
        try:
            return ast.parse(text)
        except SystemError:
            continue
    return ast.parse(text)
