"""In-process evaluation of simple jq programs, the sandbox's fast path.

Most programs tenants write are paths, literals, comparisons and a little arithmetic:
`.nodes.check.status == "ok"`, `.inputs.x + 1`, `{id: .inputs.id, total: .nodes.sum}`.
Sending those to a sandbox child costs two context switches and two JSON round trips,
more than the evaluation itself. A program of this module's grammar runs in process:

    pipe    := alt ("|" alt)*
    alt     := or ("//" or)*
    or      := and ("or" and)*;   and := cmp ("and" cmp)*
    cmp     := sum (("==" | "!=" | "<" | "<=" | ">" | ">=") sum)?
    sum     := prod (("+" | "-") prod)*;   prod := post (("*" | "/") post)*
    post    := term (FIELD | "[" (STRING | INT) "]")*
    term    := "." | FIELD | NUMBER | STRING | true | false | null | "(" pipe ")"
             | "[" (alt ("," alt)*)? "]" | "{" (key (":" obj_value)?)","... "}"
             | "if" pipe "then" pipe ("elif" pipe "then" pipe)* ("else" pipe)? "end"
             | length | not | type | keys

Every operator of this grammar yields exactly one value and costs time linear in the
values it touches; a program has at most `MAX_TERMS` terms (and at most
AOB_JQ_MAX_PROGRAM_BYTES bytes), so an evaluation is bounded by construction and no
budget could ever be reached. Nothing here needs to be exact where it is unsure: any
case outside the well-trodden (an error, a string repeated, an object merged, a number
jq would print differently, a result near the output budget) raises `Fallback`, and
the caller evaluates the program in the sandbox, which is the reference.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from aob.events.types import Json

MAX_TERMS = 64  # more than this, and the program goes to the sandbox
MAX_ELEMENTS = 10_000  # values compared or sorted by one operator, at most
MAX_STRING = 1 << 20  # characters a concatenation may build
_EXACT_INT = 2**53  # beyond, jq's doubles and Python's ints disagree


class Fallback(Exception):
    """The fast path cannot vouch for the result: evaluate in the sandbox."""


class NotSimple(Exception):
    """The program is outside this module's grammar."""


Program = Callable[[Json], Json]

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<field>\.[A-Za-z_][A-Za-z0-9_]*|\."(?:[^"\\]|\\[^(])*")
    | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<string>"(?:[^"\\]|\\[^(])*")
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>//|==|!=|<=|>=|[.|,()\[\]{}:<>+\-*/])
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "if", "then", "elif", "else", "end", "true", "false", "null"}
_BUILTINS = {"length", "not", "type", "keys"}


Reads = frozenset[str] | None  # node ids whose outputs a program may see; None: any


def compile_simple(program: str) -> Program | None:
    """`program` as a function of its input, or None when it is not simple."""
    parsed = _parse(program)
    return None if parsed is None else parsed[0]


def node_reads(program: str) -> Reads:
    """The ids of the nodes whose outputs `program` can observe in a run's context
    ({"inputs", "nodes": {id: output}, "iteration"}), or None when it may see any (it
    uses `.nodes` as a whole, `.` itself, or is not simple). A program given a context
    holding only these outputs answers exactly as over the whole context."""
    parsed = _parse(program)
    return None if parsed is None else parsed[1]


@lru_cache(maxsize=4096)
def _parse(program: str) -> tuple[Program, Reads] | None:
    try:
        parser = _Parser(_tokens(program))
        return parser.program(), parser.reads_found()
    except (NotSimple, Fallback, RecursionError):
        return None


def evaluate_simple(program: Program, value: Json, *, max_bytes: int, max_depth: int) -> Json:
    """Run a compiled simple program; raises Fallback where the sandbox must decide."""
    try:
        result = program(value)
    except (Fallback, RecursionError):
        raise Fallback from None
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, AttributeError):
        raise Fallback from None
    _check_output(result, max_bytes, max_depth)
    return result


# --- lexing and parsing -------------------------------------------------------------


def _tokens(program: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position, end = 0, len(program.rstrip())
    while position < end:
        match = _TOKEN.match(program, position)
        if match is None or match.lastgroup is None:
            raise NotSimple
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
    if not tokens or len(tokens) > 8 * MAX_TERMS:
        raise NotSimple
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.at = 0
        self.terms = 0
        # What the program reads of its input, the run's context: paths taken from
        # the input itself are recorded; inside the right side of a pipe (`derived`)
        # the input is another value.
        self.derived = 0
        self.reads: set[str] | None = set()
        self.path: list[str | int] | None = None  # the last term, if a path of the input

    def reads_found(self) -> Reads:
        return None if self.reads is None else frozenset(self.reads)

    def record(self, path: list[str | int]) -> None:
        """The input's `path` is read (an empty path: all of it)."""
        if self.derived or self.reads is None:
            return
        if not path or (path[0] == "nodes" and (len(path) < 2 or not isinstance(path[1], str))):
            self.reads = None
        elif path[0] == "nodes":
            assert isinstance(path[1], str)
            self.reads.add(path[1])

    def right_of_pipe(self, parse: Callable[[], Program]) -> Program:
        self.derived += 1
        try:
            return parse()
        finally:
            self.derived -= 1

    def program(self) -> Program:
        compiled = self.pipe()
        if self.at != len(self.tokens):
            raise NotSimple
        return compiled

    def peek(self) -> str:
        return self.tokens[self.at][1] if self.at < len(self.tokens) else ""

    def kind(self) -> str:
        return self.tokens[self.at][0] if self.at < len(self.tokens) else ""

    def take(self, text: str | None = None) -> str:
        if self.at >= len(self.tokens) or (text is not None and self.peek() != text):
            raise NotSimple
        self.at += 1
        return self.tokens[self.at - 1][1]

    def pipe(self) -> Program:
        left = self.alt()
        while self.peek() == "|" and self.kind() == "op":
            self.take()
            left = _piped(left, self.right_of_pipe(self.alt))
        return left

    def alt(self) -> Program:
        left = self.binary(0)
        if self.peek() == "//":  # right-associative
            self.take()
            return _alternative(left, self.alt())
        return left

    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("or",),
        ("and",),
        ("==", "!=", "<", "<=", ">", ">="),
        ("+", "-"),
        ("*", "/"),
    )

    def binary(self, level: int) -> Program:
        if level == len(self._LEVELS):
            return self.postfix()
        left = self.binary(level + 1)
        operators = self._LEVELS[level]
        while self.peek() in operators and self.kind() in ("op", "word"):
            operator = self.take()
            left = _binary(operator, left, self.binary(level + 1))
            if level == 2:  # comparisons do not chain in jq
                break
        return left

    def postfix(self) -> Program:
        compiled = self.term()
        path = self.path
        while True:
            if self.kind() == "field":
                key: str | int = _field_name(self.take())
            elif self.peek() == "[" and self.kind() == "op":
                self.take()
                key = self.index_key()
                self.take("]")
            else:
                if path is not None:
                    self.record(path)
                return compiled
            compiled = _piped(compiled, _index(key))
            if path is not None:
                path.append(key)

    def index_key(self) -> str | int:
        kind, text = self.kind(), self.take()
        if kind == "string":
            return _string(text)
        if kind == "number" and text.isdigit():
            return int(text)
        raise NotSimple

    def term(self) -> Program:
        """One term; `self.path` says afterwards whether it is a path of the input."""
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise NotSimple
        kind, text = self.kind(), self.take()
        path: list[str | int] | None = None
        if kind == "field" or text == ".":
            path = [_field_name(text)] if kind == "field" else []
            compiled = self.root_path(path)
        else:
            compiled = self.other_term(kind, text)
        self.path = path
        return compiled

    def root_path(self, path: list[str | int]) -> Program:
        if path:
            return _index(path[0])
        if self.peek() == "[" and self.kind() == "op":
            self.take()
            path.append(self.index_key())
            self.take("]")
            return _index(path[0])
        return _identity

    def other_term(self, kind: str, text: str) -> Program:
        if kind == "number":
            return _constant(_number(json.loads(text)))
        if kind == "string":
            return _constant(_string(text))
        if kind == "word":
            return self.word(text)
        if text == "(":
            inner = self.pipe()
            self.take(")")
            return inner
        if text == "[":
            return self.array()
        if text == "{":
            return self.object()
        raise NotSimple

    def word(self, text: str) -> Program:
        if text in ("true", "false", "null"):
            return _constant({"true": True, "false": False, "null": None}[text])
        if text == "if":
            return self.conditional()
        if text in _BUILTINS:
            self.record([])  # applied to the input: it sees all of it
            return _BUILTIN_FUNCTIONS[text]
        raise NotSimple

    def conditional(self) -> Program:
        branches: list[tuple[Program, Program]] = []
        while True:
            condition = self.pipe()
            self.take("then")
            branches.append((condition, self.pipe()))
            if self.peek() != "elif":
                break
            self.take()
        otherwise: Program = _identity
        if self.peek() == "else":
            self.take()
            otherwise = self.pipe()
        else:
            self.record([])  # no else: the input itself is an outcome
        self.take("end")
        return _conditional(branches, otherwise)

    def array(self) -> Program:
        items: list[Program] = []
        if self.peek() == "]":
            self.take()
            return lambda value: []
        while True:
            items.append(self.alt())
            separator = self.take()
            if separator == "]":
                return lambda value: [item(value) for item in items]
            if separator != ",":  # a pipe inside [...] would spread over the commas
                raise NotSimple

    def object(self) -> Program:
        entries: list[tuple[str, Program]] = []
        if self.peek() == "}":
            self.take()
            return lambda value: {}
        while True:
            kind, text = self.kind(), self.take()
            if kind == "string":
                key = _string(text)
            elif kind == "word" and text not in _KEYWORDS and text not in _BUILTINS:
                key = text
            else:
                raise NotSimple
            if self.peek() == ":":
                self.take()
                entries.append((key, self.object_value()))
            else:
                self.record([key])
                entries.append((key, _index(key)))  # {a} is {a: .a}
            separator = self.take()
            if separator == "}":
                return lambda value: {key: entry(value) for key, entry in entries}
            if separator != ",":
                raise NotSimple

    def object_value(self) -> Program:
        """jq's object values are terms joined by pipes (`{a: .x + 1}` does not parse)."""
        value = self.postfix()
        while self.peek() == "|":
            self.take()
            value = _piped(value, self.right_of_pipe(self.postfix))
        return value


def _field_name(token: str) -> str:
    return _string(token[1:]) if token.startswith('."') else token[1:]


def _string(token: str) -> str:
    text = json.loads(token)
    if not isinstance(text, str) or not _plain(text):
        raise NotSimple
    return text


# --- semantics --------------------------------------------------------------------


def _identity(value: Json) -> Json:
    return value


def _constant(constant: Json) -> Program:
    return lambda value: constant


def _piped(first: Program, then: Program) -> Program:
    return lambda value: then(first(value))


def _index(key: str | int) -> Program:
    def index(value: Json) -> Json:
        if value is None:
            return None
        if isinstance(key, str) and isinstance(value, dict):
            return value.get(key)
        if isinstance(key, int) and isinstance(value, list):
            return value[key] if -len(value) <= key < len(value) else None
        raise Fallback  # jq raises an error here: its message comes from the sandbox

    return index


def _truthy(value: Json) -> bool:
    return value is not None and value is not False


def _alternative(left: Program, right: Program) -> Program:
    def alternative(value: Json) -> Json:
        first = left(value)
        return first if _truthy(first) else right(value)

    return alternative


def _conditional(branches: list[tuple[Program, Program]], otherwise: Program) -> Program:
    def conditional(value: Json) -> Json:
        for condition, then in branches:
            if _truthy(condition(value)):
                return then(value)
        return otherwise(value)

    return conditional


def _binary(operator: str, left: Program, right: Program) -> Program:
    if operator == "and":
        return lambda value: _truthy(left(value)) and _truthy(right(value))
    if operator == "or":
        return lambda value: _truthy(left(value)) or _truthy(right(value))
    apply = _OPERATORS[operator]
    # jq evaluates the right operand first (it matters only for errors, which fall back).
    return lambda value: apply(left(value), right(value))


def _add(a: Json, b: Json) -> Json:
    if a is None:
        return b
    if b is None:
        return a
    if _is_number(a) and _is_number(b):
        return _number(a + b)
    if isinstance(a, str) and isinstance(b, str):
        if len(a) + len(b) > MAX_STRING:
            raise Fallback
        return a + b
    raise Fallback  # arrays and objects: left to jq


def _arithmetic(operation: Callable[[Any, Any], Any]) -> Callable[[Json, Json], Json]:
    def apply(a: Json, b: Json) -> Json:
        if not (_is_number(a) and _is_number(b)):
            raise Fallback  # string repetition, object merge, split: left to jq
        return _number(operation(a, b))

    return apply


def _equal(a: Json, b: Json) -> bool:
    """jq's equality (1 == 1.0, true != 1), visiting at most MAX_ELEMENTS values."""
    visited = 0
    pairs: list[tuple[Json, Json]] = [(a, b)]
    while pairs:
        a, b = pairs.pop()
        visited += 1
        if visited > MAX_ELEMENTS:
            raise Fallback
        if _is_number(a) and _is_number(b):
            if _number(a) != _number(b):
                return False
        elif type(a) is not type(b):
            return False
        elif isinstance(a, list):
            assert isinstance(b, list)
            if len(a) != len(b):
                return False
            pairs.extend(zip(a, b, strict=True))
        elif isinstance(a, dict):
            assert isinstance(b, dict)
            if a.keys() != b.keys():
                return False
            pairs.extend((a[key], b[key]) for key in a)
        elif isinstance(a, str) and not (_plain(a) and isinstance(b, str) and _plain(b)):
            raise Fallback
        elif a != b:
            return False
    return True


_ORDER = {type(None): 0, bool: 1, int: 3, float: 3, str: 4, list: 5, dict: 6}


def _rank(value: Json) -> int:
    if value is True:
        return 2
    return _ORDER[type(value)]


def _less(a: Json, b: Json) -> bool:
    rank_a, rank_b = _rank(a), _rank(b)
    if rank_a != rank_b:
        return rank_a < rank_b
    if rank_a == 3:
        return bool(_number(a) < _number(b))
    if rank_a == 4:
        assert isinstance(a, str)
        assert isinstance(b, str)
        if not (_plain(a) and _plain(b)):
            raise Fallback
        return a < b  # code point order = the UTF-8 byte order jq compares
    if rank_a <= 2:
        return False
    raise Fallback  # arrays and objects: left to jq


_OPERATORS: dict[str, Callable[[Json, Json], Json]] = {
    "==": _equal,
    "!=": lambda a, b: not _equal(a, b),
    "<": _less,
    "<=": lambda a, b: not _less(b, a),
    ">": lambda a, b: _less(b, a),
    ">=": lambda a, b: not _less(a, b),
    "+": _add,
    "-": _arithmetic(lambda a, b: a - b),
    "*": _arithmetic(lambda a, b: a * b),
    "/": _arithmetic(lambda a, b: a / b),
}


def _length(value: Json) -> Json:
    if value is None:
        return 0
    if isinstance(value, str):
        if not _plain(value):
            raise Fallback
        return len(value)
    if isinstance(value, list | dict):
        return len(value)
    if _is_number(value):
        return _number(abs(value))
    raise Fallback  # booleans have no length


def _type(value: Json) -> Json:
    names = ("null", "boolean", "boolean", "number", "string", "array", "object")
    return names[_rank(value)]


def _keys(value: Json) -> Json:
    if isinstance(value, dict) and len(value) <= MAX_ELEMENTS:
        if not all(_plain(key) for key in value):
            raise Fallback
        return sorted(value)
    raise Fallback


_BUILTIN_FUNCTIONS: dict[str, Program] = {
    "length": _length,
    "not": lambda value: not _truthy(value),
    "type": _type,
    "keys": _keys,
}


# --- numbers and output ----------------------------------------------------------


def _is_number(value: Json) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any) -> int | float:
    """A number as jq (a double, integral ones printed as integers) would give it."""
    if isinstance(value, int):
        if abs(value) > _EXACT_INT:
            raise Fallback
        return value
    if not math.isfinite(value):
        raise Fallback
    if value.is_integer():
        if abs(value) > _EXACT_INT:
            raise Fallback
        return int(value)
    return float(value)


def _plain(text: str) -> bool:
    """Text both sides read alike (a lone surrogate is replaced by jq's parser)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_output(result: Json, max_bytes: int, max_depth: int) -> None:
    """Fall back unless `result` is well inside the output budgets, and every number
    and string in it reads exactly as jq's output would."""
    budget = max_bytes * 9 // 10  # close calls are the sandbox's to make, exactly
    size = 0
    stack: list[tuple[Json, int]] = [(result, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if len(value) > budget or not _plain(value):
                raise Fallback
            if value.isascii() and value.isprintable():
                size += len(value) + 2 + value.count('"') + value.count("\\")
            else:
                size += len(json.dumps(value, ensure_ascii=False))
        elif isinstance(value, bool) or value is None:
            size += 5
        elif isinstance(value, int):
            if abs(value) > _EXACT_INT:
                raise Fallback  # jq reads it as a double: it would print it rounded
            size += 24
        elif isinstance(value, float):
            if not math.isfinite(value) or value.is_integer():
                raise Fallback  # jq prints 2.0 as 2
            size += 24
        elif depth >= max_depth - 1:
            raise Fallback
        elif isinstance(value, list):
            size += 1 + len(value)
            stack.extend((item, depth + 1) for item in value)
        else:
            assert isinstance(value, dict)
            size += 1 + len(value)
            for key, item in value.items():
                if not _plain(key):
                    raise Fallback
                size += len(key) + 3
                stack.append((item, depth + 1))
        if size > budget:
            raise Fallback
