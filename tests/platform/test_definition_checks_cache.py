"""An API process keeps the checks of definitions it saw lately (clients submit one
inline definition run after run): the same definition, in any key order, gets the same
verdict without being checked again, under the limits of this process, and what is kept
stays bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aob.platform import commands as commands_module
from aob.platform.commands import CACHED_DEFINITION_CHECKS, Commands
from aob.platform.engine import Engine
from aob.platform.problems import Problem
from aob.platform.settings import Settings
from aob.projections.workflow.definition import check_definition


def definition(output: Any, node_type: str = "noop") -> dict[str, Any]:
    return {"name": "w", "nodes": [{"id": "a", "type": node_type, "config": {"output": output}}]}


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = await Engine.open(Settings(data_dir=tmp_path, workers=[], workflow_max_nodes=2), "dev")
    try:
        yield engine
    finally:
        await engine.stop()


def counting_checks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The definitions `check_definition` is really called with, from now on."""
    seen: list[Any] = []
    real = check_definition

    def check(doc: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(doc)
        return real(doc, *args, **kwargs)

    monkeypatch.setattr(commands_module, "check_definition", check)
    return seen


async def test_one_definition_in_any_key_order_is_checked_once_and_warned_alike(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = counting_checks(monkeypatch)
    api = Commands(engine)
    typo = definition("x", node_type="nop")
    warnings = api.validate(typo)
    assert [w["path"] for w in warnings] == ["/nodes/0/type"]
    assert api.validate({key: typo[key] for key in reversed(list(typo))}) == warnings
    assert api.validate(definition("y", node_type="nop")) == warnings  # another definition
    assert len(checks) == 2


THREE_NODES = {"name": "w", "nodes": [{"id": n, "type": "noop"} for n in "abc"]}


@pytest.mark.parametrize(
    ("refused", "message", "checks_made"),
    [
        (THREE_NODES, "AOB_WORKFLOW_MAX_NODES", 1),  # this process's limit, kept
        (definition({1, 2}), "not JSON", 2),  # no digest to keep it by: checked again
    ],
)
async def test_a_refused_definition_is_refused_again_with_the_same_problems(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    refused: dict[str, Any],
    message: str,
    checks_made: int,
) -> None:
    checks = counting_checks(monkeypatch)
    api = Commands(engine)
    errors = []
    for _ in range(2):
        with pytest.raises(Problem) as refusal:
            api.validate(refused)
        assert refusal.value.status == 422
        errors.append(refusal.value.extra["errors"])
    assert errors[0] == errors[1]
    assert message in errors[0][0]["message"]
    assert len(checks) == checks_made


async def test_the_kept_checks_are_bounded(engine: Engine) -> None:
    api = Commands(engine)
    for output in range(CACHED_DEFINITION_CHECKS + 50):
        api.validate(definition(output))
    assert len(api._checks) == CACHED_DEFINITION_CHECKS
