"""The pool: the event loop stays free, children recover, results match in-process jq."""

from __future__ import annotations

import asyncio
import time

import pytest

from aob.projections.workflow.expressions import ExpressionError, evaluate, evaluate_all
from aob.workers.sandbox import (
    JqBudgetExceeded,
    JqSandbox,
    close_shared_sandbox,
    jq_all,
    jq_first,
    jq_truthy,
    shared_sandbox,
)
from aob.workers.sandbox.child import Programs

CONTEXT = {
    "inputs": {
        "orders": [{"id": "a", "amount": "12.5"}, {"id": "b", "amount": "3"}],
        "name": "Zoë",
        "n": None,
    },
    "nodes": {"fetch": {"status": 200, "body": {"items": [1, 2, 3], "ok": True}}},
    "iteration": 2,
}
PROGRAMS = [
    ".",
    "[.inputs.orders[] | {id, amount: (.amount | tonumber)}]",
    ".nodes.fetch.body.items | map(. * 2) | add",
    ".inputs.name | ascii_downcase",
    '.inputs | to_entries | map("\\(.key)=\\(.value)") | join("&")',
    ".iteration > 1 and .nodes.fetch.status == 200",
    '.inputs.n // "default"',
    "[paths] | length",
    ".inputs.orders | group_by(.amount) | map(length)",
    "empty",
    '.inputs.name + " ünï"',
    '"\u00e9" | explode',
    "1.5, 2, 1e3, -0.25",
]


@pytest.mark.parametrize("program", PROGRAMS)
async def test_results_equal_in_process_jq(sandbox: JqSandbox, program):
    assert await sandbox.first(program, CONTEXT) == evaluate(program, CONTEXT)
    assert await sandbox.all(program, CONTEXT) == evaluate_all(program, CONTEXT)


@pytest.mark.parametrize(
    "program", ['error("boom")', ".inputs.name.x", "now", "1 +", "input", '"a" - 1', "1) | (2"]
)
async def test_errors_equal_in_process_jq(sandbox: JqSandbox, program):
    with pytest.raises(ExpressionError) as expected:
        evaluate(program, CONTEXT)
    with pytest.raises(ExpressionError) as caught:
        await sandbox.first(program, CONTEXT)
    assert not isinstance(caught.value, JqBudgetExceeded)
    assert caught.value.message == expected.value.message


async def test_the_event_loop_stays_responsive_while_programs_run_away(sandbox: JqSandbox):
    gaps: list[float] = []
    busy: list[float] = []  # the same gaps in the loop thread's CPU time: immune to preemption
    done = asyncio.Event()

    async def ticker() -> None:
        last, last_cpu = time.monotonic(), time.thread_time()
        while not done.is_set():
            await asyncio.sleep(0)
            now, now_cpu = time.monotonic(), time.thread_time()
            gaps.append(now - last)
            busy.append(now_cpu - last_cpu)
            last, last_cpu = now, now_cpu

    async def attack(program: str) -> str:
        try:
            await sandbox.first(program, None)
        except JqBudgetExceeded as error:
            return error.budget
        return "finished"

    ticking = asyncio.ensure_future(ticker())
    attacks = asyncio.gather(
        attack("def f: f; f"),
        attack("last(range(1e10))"),
        attack('"x" * 1e9'),
        attack("[range(1e9)] | length"),
    )
    ordinary = [await sandbox.first(".inputs.orders | length", CONTEXT) for _ in range(20)]
    budgets = await attacks
    done.set()
    await ticking
    assert ordinary == [2] * 20
    assert sorted(budgets) == ["cpu", "cpu", "cpu", "memory"]
    assert len(gaps) > 100
    assert max(busy) < 0.05  # no jq ran on the loop
    # Nor did it wait for a child: a blocking wait would last the wall guard (5 s). The
    # bound is loose because a loaded CI machine preempts the loop for 100+ ms at times.
    assert max(gaps) < 1.0


async def test_the_pool_recovers_and_serves_concurrent_evaluations(sandbox: JqSandbox):
    before = set(sandbox.pids())
    with pytest.raises(JqBudgetExceeded):
        await sandbox.first("def f: f; f", None)
    # Not simple programs (simple.py), so that children evaluate them.
    assert await sandbox.first("[.a] | first", {"a": 7}) == 7
    results = await asyncio.gather(*(sandbox.first(f"[. * {i}] | first", 3) for i in range(50)))
    assert results == [3 * i for i in range(50)]
    assert len(sandbox.pids()) == 2
    assert set(sandbox.pids()) != before


async def test_the_shared_sandbox_behind_the_public_functions():
    try:
        assert await jq_first(".a", {"a": [1, "é"]}) == [1, "é"]
        assert await jq_first("empty", None) is None
        assert await jq_all(".[] | . + 1", [1, 2]) == [2, 3]
        assert await jq_truthy(".a > 1", {"a": 2}) is True
        assert await jq_truthy("null, true", None) is False
        assert shared_sandbox().pids()
    finally:
        await close_shared_sandbox()
    assert shared_sandbox().pids() == []


def test_the_childs_program_cache_is_bounded():
    programs = Programs(max_entries=3, max_chars=1000)
    for i in range(5):
        programs.get(f". + {i}")
    assert len(programs._compiled) == 3
    programs.get("." + " " * 1500 + "| 1")
    assert len(programs._compiled) == 0


async def test_program_text_that_is_not_unicode_is_refused(sandbox: JqSandbox):
    with pytest.raises(ExpressionError, match="not valid Unicode"):
        await sandbox.first('"\ud800"', None)


async def test_a_lone_surrogate_in_the_input_reads_as_a_replacement_character(
    sandbox: JqSandbox,
):
    # jq would refuse the whole input for one (an http response may carry it): the
    # fast path and the children agree on U+FFFD, touched or not.
    assert await sandbox.first(".", "lone \ud800") == "lone \ufffd"
    assert await sandbox.first("[.] | first", "lone \ud800") == "lone \ufffd"
    assert await sandbox.first(".b", {"a": "\ud800", "b": 1}) == 1
    assert await sandbox.first("[.b] | first", {"a": "\ud800", "b": 1}) == 1
