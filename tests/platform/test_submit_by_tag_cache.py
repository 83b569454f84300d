"""A submission by tag runs the version the tag points at when it is submitted, also
when the API front end that submits did not move the tag itself: the tags an API
process keeps in memory go stale as soon as its projector applies a workflows event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aob.events.codec import decode
from aob.events.types import RUNS_TOPIC, RunSubmitted
from aob.platform.commands import Commands
from aob.platform.engine import Engine
from aob.platform.settings import Settings


def definition(marker: int) -> dict[str, Any]:
    return {"name": "w", "nodes": [{"id": "a", "type": "noop", "config": {"output": marker}}]}


async def submitted_version(engine: Engine, api: Commands, tag: str) -> int | None:
    """Submit by `tag` through `api`; the version its RunSubmitted records."""
    accepted = await api.submit_run(
        definition=None,
        tag=tag,
        workflow_id=None,
        version=None,
        inputs={},
        actor="t",
        trace_id="",
    )
    run_id = accepted["run_id"]
    ends = await engine.log.end_offsets(RUNS_TOPIC)
    for partition, end in ends.items():
        for record in await engine.log.read(RUNS_TOPIC, partition, 0, end):
            event = decode(record.value)
            if event.key == run_id and isinstance(event.payload, RunSubmitted):
                return event.payload.version
    raise AssertionError(f"no RunSubmitted for {run_id}")


async def test_a_tag_moved_through_another_front_end_is_followed_at_once(tmp_path: Path) -> None:
    engine = await Engine.open(Settings(data_dir=tmp_path, workers=[]), "dev")
    await engine.start()
    try:
        mover, submitter = Commands(engine), Commands(engine)
        await mover.create_workflow(definition(1), tag="prod", actor="t", trace_id="")
        assert await submitted_version(engine, submitter, "prod") == 1
        assert await submitted_version(engine, submitter, "prod") == 1  # from memory

        await mover.create_workflow(definition(2), tag=None, actor="t", trace_id="")
        assert await submitted_version(engine, submitter, "prod") == 1  # not moved yet
        await mover.move_tag("prod", "w", 2, actor="t", trace_id="")
        assert await submitted_version(engine, submitter, "prod") == 2

        await mover.move_tag("prod", "w", 1, actor="t", trace_id="")
        assert await submitted_version(engine, submitter, "prod") == 1
    finally:
        await engine.stop()
