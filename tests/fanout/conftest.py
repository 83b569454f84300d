from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fanout.live import LiveServer


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One dev server shared by the package's tests (each test makes its own runs)."""
    live = LiveServer(tmp_path_factory.mktemp("fanout") / "data").start()
    yield live
    live.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A dev server of the test's own, for tests that stop or restart it."""
    live = LiveServer(tmp_path / "data").start()
    yield live
    live.stop()
