"""jq helpers: results, truthiness, errors, and the determinism sandbox."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aob.projections.workflow.expressions import (
    ExpressionError,
    compile_jq,
    evaluate,
    evaluate_all,
    is_truthy,
)

CONTEXT = {"inputs": {"items": [1, 2, 3]}, "nodes": {"fetch": [2, 4]}, "iteration": 0}


def test_evaluate_returns_the_first_output():
    assert evaluate(".inputs.items | map(. * 2)", CONTEXT) == [2, 4, 6]
    assert evaluate(".inputs.items[]", CONTEXT) == 1


def test_evaluate_without_output_is_none():
    assert evaluate("empty", CONTEXT) is None


def test_evaluate_all_returns_every_output():
    assert evaluate_all(".inputs.items[]", CONTEXT) == [1, 2, 3]
    assert evaluate_all("empty", CONTEXT) == []


def test_evaluate_all_bounds_runaway_generators():
    with pytest.raises(ExpressionError, match="more than 10 outputs"):
        evaluate_all("repeat(1)", None, max_outputs=10)


def test_first_output_does_not_run_the_rest_of_a_generator():
    assert evaluate("repeat(1)", None) == 1


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        ("false", False),
        ("null", False),
        ("empty", False),
        ("0", True),
        ('""', True),
        ("[]", True),
        ("{}", True),
        (".nodes.fetch | length > 1", True),
        (".nodes.missing", False),
        ("false, true", False),
    ],
)
def test_is_truthy_follows_jq(program, expected):
    assert is_truthy(program, CONTEXT) is expected


def test_syntax_error_carries_jqs_message_with_the_users_line():
    with pytest.raises(ExpressionError) as caught:
        compile_jq(".a\n| .b |")
    message = caught.value.message
    assert "syntax error" in message
    assert "line 2," in message
    assert "compile error" not in message


def test_empty_program_is_an_error():
    with pytest.raises(ExpressionError, match="empty"):
        compile_jq("   ")


def test_runtime_error_carries_jqs_message():
    with pytest.raises(ExpressionError, match="Cannot index number"):
        evaluate(".a.b", {"a": 1})
    with pytest.raises(ExpressionError, match="boom"):
        evaluate('error("boom")', None)


def test_non_json_input_is_an_expression_error():
    with pytest.raises(ExpressionError, match="not JSON"):
        evaluate(".", {1, 2})


def test_compiled_programs_are_cached():
    assert compile_jq(".x + 1") is compile_jq(".x + 1")


@pytest.mark.parametrize(
    "program",
    ["now", ".a | env", "input", "[inputs]", 'debug("x")', "localtime", "halt_error"],
)
def test_builtins_that_break_determinism_do_not_compile(program):
    with pytest.raises(ExpressionError, match="not allowed"):
        compile_jq(program)


def test_env_variable_is_empty():
    assert evaluate("$ENV", None) is None


def test_modules_cannot_be_loaded():
    with pytest.raises(ExpressionError, match="syntax error"):
        compile_jq('include "lib"; .')


def test_user_definitions_still_work():
    assert evaluate("def twice: . * 2; .inputs.items | map(twice)", CONTEXT) == [2, 4, 6]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_compiling_any_text_raises_only_expression_error(program):
    try:
        compile_jq(program)
    except ExpressionError as error:
        message = error.message
    else:
        return
    assert message
