"""Tenant regexes run on RE2: linear time, clear errors for what it cannot do."""

from __future__ import annotations

import time

import pytest

from aob.workers.agent.pipeline import PipelineError, run_pipeline
from aob.workers.sandbox.regex import RegexError, compile_regex


@pytest.mark.parametrize("length", [40, 100_000])
def test_a_catastrophic_pattern_matches_in_linear_time(length):
    started = time.process_time()  # CPU: the work done, whatever the machine's load
    assert compile_regex(r"(a+)+$").search("a" * length + "b") is None
    assert compile_regex(r"(x+x+)+y").search("x" * length) is None
    assert time.process_time() - started < 0.5


async def test_regex_extract_no_longer_backtracks():
    started = time.process_time()  # CPU: the work done, whatever the machine's load
    step = {"op": "regex_extract", "pattern": r"(a+)+$"}
    assert await run_pipeline([step], "a" * 50_000 + "b") is None
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(a)\1", "invalid escape sequence"),
        (r"a(?=b)", "invalid perl operator"),
        (r"(?<=a)b", "invalid perl operator"),
        ("(", "missing )"),
    ],
)
def test_an_unsupported_pattern_says_why(pattern, why):
    with pytest.raises(RegexError, match="backreferences and lookaround are not supported") as e:
        compile_regex(pattern)
    assert why in str(e.value)


async def test_the_pipeline_step_names_the_problem():
    with pytest.raises(PipelineError, match=r"step 0 \(regex_extract\): invalid pattern for RE2"):
        await run_pipeline([{"op": "regex_extract", "pattern": r"(\w)\1"}], "aa")


def test_patterns_are_bounded_in_length_and_size():
    with pytest.raises(RegexError, match="longer than 1000 characters"):
        compile_regex("a" * 1001)
    with pytest.raises(RegexError):
        compile_regex("((((a{100}){100}){100}){100})")
