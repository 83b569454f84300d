"""Tenant jq cannot stall or crash the process: every attack fails fast, on its budget."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from aob.projections.workflow.expressions import ExpressionError
from aob.workers.sandbox import JqBudgetExceeded, JqSandbox
from tests.sandbox.conftest import settings

# The parent's wall guard, made far longer than any budget: an attack that ends before
# it was ended by its own budget in the child. No bound on the wall time itself: on a
# loaded machine a child at nice 10 may wait seconds for its 250 ms of CPU.
NO_WALL_GUARD_MS = 600_000
# A deadline for the test, not a measurement: well under the wall guard.
DEADLINE_S = 120.0


@pytest.mark.parametrize(
    ("program", "budget", "setting"),
    [
        ("def f: f; f", "cpu", "AOB_JQ_CPU_MS"),
        ("last(range(1e10))", "cpu", "AOB_JQ_CPU_MS"),
        ("[range(1e9)] | length", "cpu", "AOB_JQ_CPU_MS"),
        ("[range(1e7)]", "cpu", "AOB_JQ_CPU_MS"),  # 250 ms of CPU run out before the output
        ('"x" * 1e9', "memory", "AOB_JQ_MEMORY_MB"),
        ('"x" * 2000000', "output", "AOB_JQ_OUTPUT_BYTES"),
        ('[range(20000) | "0123456789abcdef" * 4]', "output", "AOB_JQ_OUTPUT_BYTES"),
        ("reduce range(5000) as $i (null; [.])", "output", "AOB_JQ_MAX_DEPTH"),
    ],
)
async def test_an_attack_fails_on_its_budget_in_the_child(program, budget, setting):
    pool = JqSandbox(settings(wall_ms=NO_WALL_GUARD_MS))
    try:
        with pytest.raises(JqBudgetExceeded, match=rf"jq .*budget exceeded .*{setting}") as caught:
            async with asyncio.timeout(DEADLINE_S):
                await pool.first(program, {"a": 1})
        assert caught.value.budget == budget
        assert await pool.first(".a + 1", {"a": 1}) == 2  # and the pool still works
    finally:
        await pool.close()


async def test_the_cpu_message_names_the_budget_and_its_setting(sandbox: JqSandbox):
    with pytest.raises(JqBudgetExceeded) as caught:
        await sandbox.first("def f: f; f", None)
    assert str(caught.value) == "jq CPU budget exceeded (250 ms, AOB_JQ_CPU_MS)"
    assert isinstance(caught.value, ExpressionError)


async def test_an_array_growing_past_the_memory_budget_is_stopped():
    pool = JqSandbox(settings(cpu_ms=20_000, memory_mb=32))
    try:
        with pytest.raises(JqBudgetExceeded, match="AOB_JQ_MEMORY_MB") as caught:
            await pool.first("[range(1e9)] | length", None)
        assert caught.value.budget == "memory"
    finally:
        await pool.close()


async def test_nesting_within_the_depth_limit_comes_back_whole(sandbox: JqSandbox):
    value = await sandbox.first("reduce range(300) as $i (0; [.])", None)
    depth = 0
    while isinstance(value, list):
        (value,) = value
        depth += 1
    assert (depth, value) == (300, 0)


async def test_a_deep_input_is_refused_not_crashed_on(sandbox: JqSandbox):
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ExpressionError, match="input is not JSON"):
        await sandbox.first(".", deep)


async def test_outputs_are_capped_in_number(sandbox: JqSandbox):
    with pytest.raises(ExpressionError, match="more than 5 outputs"):
        await sandbox.all("repeat(1)", None, max_outputs=5)
    assert await sandbox.all("range(5)", None, max_outputs=5) == [0, 1, 2, 3, 4]


async def test_first_stops_at_the_first_output(sandbox: JqSandbox):
    assert await sandbox.first("range(1e10)", None) == 0


async def test_a_long_program_is_refused_before_compiling(sandbox: JqSandbox):
    refused = r"longer than 16384 bytes \(AOB_JQ_MAX_PROGRAM_BYTES\)"
    with pytest.raises(ExpressionError, match=refused):
        await sandbox.first("." + " " * 16_384, None)


async def test_a_stuck_child_is_killed_by_the_wall_guard():
    pool = JqSandbox(settings(workers=1, wall_ms=300))
    await pool.start()
    try:
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGSTOP)  # burns no CPU: only the wall guard can notice
        with pytest.raises(JqBudgetExceeded, match="AOB_JQ_CPU_MS"):
            await pool.first("tostring", 1)  # not simple: a child must answer
        assert await pool.first("tostring", 1) == "1"
        assert pool.pids() != [pid]
    finally:
        await pool.close()


async def test_a_cancelled_evaluation_leaves_the_pool_in_sync(sandbox: JqSandbox):
    runaway = asyncio.ensure_future(sandbox.first("def f: f; f", None))
    await asyncio.sleep(0.05)
    runaway.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runaway
    assert [await sandbox.first(f". + {i}", 0) for i in range(5)] == [0, 1, 2, 3, 4]
