from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.agent.harness import Aob, running_aob
from tests.fixtures.llm import LlmServer


@pytest.fixture
async def aob(tmp_path, scripted_llm: LlmServer, monkeypatch) -> AsyncIterator[Aob]:
    # The agent's outbound HTTP goes through the HTTP worker's guard: let it reach the
    # tests' loopback servers, on whatever port they got.
    monkeypatch.setenv("AOB_HTTP_ALLOW", "127.0.0.1")
    monkeypatch.setenv("AOB_HTTP_PORTS", "1-65535")
    async with running_aob(tmp_path / "data", scripted_llm.base_url) as instance:
        yield instance
