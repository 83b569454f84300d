"""A sandbox with the default budgets, spelled out so AOB_JQ_* in the environment
cannot change what the tests expect."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aob.workers.sandbox import JqSandbox, SandboxSettings


def settings(**overrides: int) -> SandboxSettings:
    values = {
        "cpu_ms": 250,
        "memory_mb": 256,
        "output_bytes": 1024 * 1024,
        "max_depth": 512,
        "workers": 2,
        "max_program_bytes": 16 * 1024,
        "max_queue": 10_000,
    }
    return SandboxSettings(**(values | overrides))


@pytest.fixture
async def sandbox() -> AsyncIterator[JqSandbox]:
    pool = JqSandbox(settings())
    await pool.start()
    yield pool
    await pool.close()
