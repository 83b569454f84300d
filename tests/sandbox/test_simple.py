"""The in-process fast path for simple jq programs agrees with jq itself.

Differential: programs drawn from the fast path's grammar (and a little beyond it) run
on drawn JSON values both ways; wherever the fast path answers, jq's answer must be
the same JSON text. Where it cannot vouch for a result it falls back, never guesses.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aob.projections.workflow.expressions import ExpressionError, compile_jq
from aob.projections.workflow.simple_jq import (
    Fallback,
    compile_simple,
    evaluate_simple,
    node_reads,
)
from aob.workers.sandbox import JqSandbox
from aob.workers.sandbox.pool import input_text

KEYS = ["a", "b", "nodes", "inputs", "x", "é"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | st.sampled_from([0, 1, 2, -1, 2.0, 0.5, 1e17, 2**53, 2**53 + 1, -0.0])
    | st.text(max_size=6)
    | st.sampled_from(["", "a", "b", "ab", "é", "\ud800", '"', "\\"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)

paths = st.lists(
    st.sampled_from([f".{k}" for k in KEYS[:5]] + ['."é"', '["a"]', "[0]", "[1]", "[-1]"]),
    min_size=1,
    max_size=3,
).map(lambda parts: "".join(parts) if parts[0].startswith(".") else "." + "".join(parts))
literals = st.sampled_from(
    [
        "1",
        "0",
        "2.5",
        "1.0",
        "1e2",
        "1e400",
        '"a"',
        '"é"',
        '"x\\"y"',
        "true",
        "false",
        "null",
        "[]",
        "{}",
        "[1, .a]",
        '{a: 1, "b": .b}',
        "{a}",
        "{a: .a | .b}",
    ]
)
operators = st.sampled_from(
    ["+", "-", "*", "/", "==", "!=", "<", "<=", ">", ">=", "and", "or", "//", "|", "%"]
)
functions = st.sampled_from(["length", "not", "type", "keys", "tostring", "."])


def _programs() -> st.SearchStrategy[str]:
    atoms = paths | literals | functions
    return st.recursive(
        atoms,
        lambda inner: (
            st.tuples(inner, operators, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
            | st.tuples(inner, inner, inner).map(lambda t: f"if {t[0]} then {t[1]} else {t[2]} end")
            | st.tuples(inner, inner).map(lambda t: f"if {t[0]} then {t[1]} end")
            | st.lists(inner, min_size=1, max_size=3).map(
                lambda items: "[" + ", ".join(items) + "]"
            )
            | st.tuples(inner, inner).map(lambda t: f"{{k: {t[0]}, j: ({t[1]})}}")
        ),
        max_leaves=6,
    )


def jq_text(program: str, value: Any) -> str | None:
    """jq's first output as compact JSON text, None when jq fails on it (the sandbox
    hands jq its input as `input_text` makes it)."""
    try:
        compiled: Any = compile_jq(program)  # the stub lacks input_text
        outputs = compiled.input_text(input_text(value)).all()
    except (ExpressionError, ValueError):
        return None
    return json.dumps(outputs[0], separators=(",", ":")) if outputs else "<none>"


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(program=_programs(), value=values)
def test_the_fast_path_answers_as_jq_does(program: str, value: Any) -> None:
    simple = compile_simple(program)
    if simple is None:
        return
    try:
        ours = evaluate_simple(simple, value, max_bytes=1 << 20, max_depth=512)
    except Fallback:
        return
    expected = jq_text(program, value)
    assert expected is not None, f"{program!r} on {value!r}: jq fails, fast path gave {ours!r}"
    assert json.dumps(ours, separators=(",", ":")) == expected, f"{program!r} on {value!r}"


@pytest.mark.parametrize(
    "program",
    [
        ".inputs.x + 1",
        ".nodes.a * 2",
        ".nodes.b + .nodes.c + .nodes.d",
        '.nodes.check.status == "ok"',
        "{id: .inputs.id, n: (.nodes.a | length)}",
        'if .inputs.x > 1 then "big" elif .inputs.x == 1 then "one" else null end',
        ".inputs.x // 7",
        ".nodes | keys",
        '.inputs["x"]',
        "[.inputs.x, .nodes.a]",
    ],
)
def test_common_programs_take_the_fast_path(program: str) -> None:
    assert compile_simple(program) is not None


@pytest.mark.parametrize(
    "program",
    [
        "def f: f; f",
        "last(range(1e10))",
        "[range(1e9)] | length",
        ".[]",
        ".a, .b",
        "reduce range(5) as $i (0; . + $i)",
        "..",
        "$ENV",
        '.a | test("(a+)+$")',
        "[.[] | . * 2]",
        "-1",
        ".a?",
        ".[1:2]",
        "input",
        '"\\(.a)"',
        "# comment\n.",
        "{(.a): 1}",
        ".a as $x | $x",
    ],
)
def test_programs_outside_the_grammar_go_to_the_sandbox(program: str) -> None:
    assert compile_simple(program) is None


@pytest.mark.parametrize(
    ("program", "value"),
    [
        (".a * .b", {"a": "x", "b": 1_000_000_000}),  # string repetition: jq decides
        ('"x" * 1e9 | length', None),
        (".a + .b", {"a": [1], "b": [2]}),
        (".a", {"a": 2.0}),  # jq prints 2
        (".a", {"a": 2**60}),  # jq rounds it to a double
        (".a.b", {"a": 3}),  # an error: jq's message
        (".a == .b", {"a": list(range(20_000)), "b": list(range(20_000))}),
        (".a + .a", {"a": "x" * 700_000}),
    ],
)
def test_cases_jq_must_settle_fall_back(program: str, value: Any) -> None:
    simple = compile_simple(program)
    assert simple is not None
    with pytest.raises(Fallback):
        evaluate_simple(simple, value, max_bytes=1 << 20, max_depth=512)


async def test_results_near_the_output_budget_are_the_sandbox_s_to_refuse(
    sandbox: JqSandbox,
) -> None:
    # A bare path over a value larger than the budget: jq's output budget applies.
    with pytest.raises(ExpressionError, match="AOB_JQ_OUTPUT_BYTES"):
        await sandbox.first(".a", {"a": "x" * (2 << 20)})
    deep: Any = 1
    for _ in range(600):
        deep = [deep]
    with pytest.raises(ExpressionError, match="AOB_JQ_MAX_DEPTH"):
        await sandbox.first(".a", {"a": deep})


async def test_the_pool_answers_simple_programs_without_a_child(sandbox: JqSandbox) -> None:
    before = sandbox.pids()
    for child in before:  # a child would not answer now: the wall guard would fail it
        os.kill(child, signal.SIGSTOP)
    try:
        assert await sandbox.first(".nodes.a * 2", {"nodes": {"a": 21}}) == 42
        assert await sandbox.truthy('.s == "ok"', {"s": "ok"}) is True
        assert await sandbox.all("[.x, .y]", {"x": 1, "y": None}) == [[1, None]]
    finally:
        for child in before:
            os.kill(child, signal.SIGCONT)


contexts = st.fixed_dictionaries(
    {
        "inputs": values,
        "nodes": st.dictionaries(st.sampled_from(["a", "b", "c", "é"]), values, max_size=4),
        "iteration": st.integers(0, 3),
    }
)
context_programs = st.recursive(
    st.sampled_from(
        [
            ".nodes.a",
            '.nodes["b"]',
            ".nodes.c.a",
            ".inputs",
            ".inputs.a",
            ".iteration",
            ".nodes",
            ".",
            "length",
            "keys",
            '.nodes."é"',
            "{nodes}",
            "{inputs}",
            "1",
            '"s"',
        ]
    ),
    lambda inner: (
        st.tuples(inner, operators, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
        | st.tuples(inner, inner).map(lambda t: f"if {t[0]} then {t[1]} end")
        | st.lists(inner, min_size=1, max_size=3).map(lambda items: "[" + ", ".join(items) + "]")
        | st.tuples(inner, inner).map(lambda t: f"{{k: {t[0]}, j: ({t[1]})}}")
    ),
    max_leaves=6,
)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(program=context_programs, context=contexts)
def test_a_program_sees_the_same_in_a_context_narrowed_to_what_it_reads(
    program: str, context: dict[str, Any]
) -> None:
    reads = node_reads(program)
    if reads is None:
        return
    narrowed = context | {"nodes": {k: v for k, v in context["nodes"].items() if k in reads}}
    assert jq_text(program, narrowed) == jq_text(program, context), (program, reads)


@pytest.mark.parametrize(
    ("program", "reads"),
    [
        (".nodes.a * 2", {"a"}),
        ('.nodes["a"].decision == "approve" and .nodes.b > 1', {"a", "b"}),
        (".inputs.x + .iteration", set()),
        ('"x-" + ("y" * 3)', set()),
        (".nodes.a | .nodes.b", {"a"}),  # the right side reads .nodes.a's output
        ("{a: .nodes.q | length}", {"q"}),
        (".nodes | keys", None),
        (".", None),
        ("length", None),
        ("{nodes}", None),
        ("if .nodes.a then .nodes.b end", None),  # no else: `.` is an outcome
        (".nodes[0]", None),
        ("[.nodes[]]", None),  # not simple
    ],
)
def test_what_a_program_reads_of_the_run(program: str, reads: set[str] | None) -> None:
    assert node_reads(program) == (None if reads is None else frozenset(reads))
