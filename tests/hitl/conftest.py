from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.hitl.harness import Aob, running_aob


@pytest.fixture
async def aob(tmp_path) -> AsyncIterator[Aob]:
    async with running_aob(tmp_path / "data") as instance:
        yield instance
