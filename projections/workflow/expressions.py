"""jq expressions as used by workflows: edge conditions, transforms, run output.

Expressions run inside the coordinator's fold, which must replay identically, so
builtins that read the clock, the environment or stdin, or write to stderr, are
compile errors here (and `$ENV` is null). Compiled programs are cached: the same
few expressions are evaluated over and over.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from typing import Protocol

import jq

from aob.events.types import Json

# name, arity: builtins that are not deterministic or do I/O.
_FORBIDDEN: tuple[tuple[str, int], ...] = (
    ("now", 0),
    ("env", 0),
    ("input", 0),
    ("inputs", 0),
    ("input_filename", 0),
    ("input_line_number", 0),
    ("get_search_list", 0),
    ("localtime", 0),
    ("strflocaltime", 1),
    ("debug", 0),
    ("debug", 1),
    ("stderr", 0),
    ("halt", 0),
    ("halt_error", 0),
    ("halt_error", 1),
)
_MARK = "__aob_forbidden_"


def _stub(name: str, arity: int) -> str:
    """A definition shadowing builtin `name/arity` that fails to compile when used.

    jq only resolves variables in functions that are referenced, so the undefined
    variable is an error exactly when the user's program calls the builtin.
    """
    params = "(" + "; ".join(f"p{i}" for i in range(arity)) + ")" if arity else ""
    return f"def {name}{params}: ${_MARK}{name};"


# On its own line: the user's program starts on line 2, see `_clean_message`.
_PRELUDE = " ".join(_stub(n, a) for n, a in _FORBIDDEN) + " null as $ENV |\n"
_FORBIDDEN_USE = re.compile(rf"\${_MARK}(\w+) is not defined")
_LINE = re.compile(r"(<top-level>, line )(\d+)")
_ERROR_COUNT = re.compile(r"\s*jq: \d+ compile errors?\s*$")


class ExpressionError(ValueError):
    """A jq program does not compile, or fails on its input."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CompiledJq(Protocol):
    """The part of the `jq` binding's compiled program that we use."""

    def input_value(self, value: Json) -> Iterable[Json]: ...


def _clean_message(message: str) -> str:
    """Make jq's compile error about the user's program, not the prelude."""
    forbidden = sorted(set(_FORBIDDEN_USE.findall(message)))
    if forbidden:
        names = ", ".join(forbidden)
        return f"jq builtin not allowed ({names}): expressions must be deterministic, no I/O"
    message = _LINE.sub(lambda m: f"{m.group(1)}{max(int(m.group(2)) - 1, 1)}", message)
    return _ERROR_COUNT.sub("", message).strip()


@functools.lru_cache(maxsize=4096)
def compile_jq(program: str) -> CompiledJq:
    """Compile `program` once; raises ExpressionError with jq's message."""
    if not program.strip():
        raise ExpressionError("empty jq expression")
    try:
        compiled: CompiledJq = jq.compile(_PRELUDE + program)
    except ValueError as error:
        raise ExpressionError(_clean_message(str(error))) from None
    return compiled


def _outputs(program: str, value: Json) -> Iterator[Json]:
    """Lazily run `program` on `value`, turning every failure into ExpressionError."""
    compiled = compile_jq(program)
    try:
        yield from compiled.input_value(value)
    except ValueError as error:
        raise ExpressionError(str(error)) from None
    except TypeError as error:  # the input is not JSON-serializable
        raise ExpressionError(f"input is not JSON: {error}") from None


def evaluate(program: str, value: Json) -> Json:
    """The first output of `program` on `value`, or None when it has no output."""
    return next(_outputs(program, value), None)


def evaluate_all(program: str, value: Json, *, max_outputs: int = 100_000) -> list[Json]:
    """Every output of `program` on `value`.

    `max_outputs` turns a runaway generator like `repeat(1)` into an error
    instead of exhausting memory.
    """
    results: list[Json] = []
    for result in _outputs(program, value):
        if len(results) == max_outputs:
            raise ExpressionError(f"more than {max_outputs} outputs")
        results.append(result)
    return results


def is_truthy(program: str, value: Json) -> bool:
    """jq truthiness of the first output: false, null and no output are false."""
    result = evaluate(program, value)
    return result is not None and result is not False
