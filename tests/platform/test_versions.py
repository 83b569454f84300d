"""Workflow versions and tag moves have one writer per workflow id and per tag: API
processes that create versions of one workflow, or move one tag, at the same time get
distinct consecutive versions and a linear history of tag moves, none lost.

Here on the embedded log: separate engines on one SQLite log and read-model file, as
separate processes would open them (tests/cluster_services/test_versions.py: the same
on Kafka and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from aob.events.codec import decode
from aob.events.types import WORKFLOWS_TOPIC, TagMoved, WorkflowCreateRequested
from aob.platform.commands import Commands
from aob.platform.engine import Engine
from aob.platform.problems import Problem
from aob.platform.settings import Settings

CREATIONS_PER_API = 8


def definition(workflow_id: str, marker: int) -> dict[str, Any]:
    """A definition whose stored copy tells which creation it came from."""
    return {
        "name": workflow_id,
        "nodes": [{"id": "a", "type": "noop", "config": {"output": marker}}],
    }


async def create_concurrently(
    apis: Sequence[Commands], workflow_id: str, per_api: int = CREATIONS_PER_API
) -> dict[int, int]:
    """Every API creates `per_api` versions of `workflow_id` at once (each moving the
    default tag, the workflow's name); marker -> the version its creator was told."""
    calls = [
        (
            marker,
            api.create_workflow(definition(workflow_id, marker), tag=None, actor="t", trace_id=""),
        )
        for i, api in enumerate(apis)
        for marker in range(i * per_api, (i + 1) * per_api)
    ]
    answers = await asyncio.gather(*(call for _, call in calls))
    return {marker: answer["version"] for (marker, _), answer in zip(calls, answers, strict=True)}


async def check_versions(api: Commands, workflow_id: str, told: dict[int, int]) -> None:
    """Consecutive versions from 1, each stored with the definition of its creator."""
    assert sorted(told.values()) == list(range(1, len(told) + 1))
    for marker, version in told.items():
        stored = await api.resolve_workflow(workflow_id, version)
        assert stored["definition"]["nodes"][0]["config"]["output"] == marker


async def tag_moves(engine: Engine, tag: str) -> list[TagMoved]:
    """The tag's moves in log order (one tag's moves share its partition)."""
    moves: list[TagMoved] = []
    for partition in range(await engine.log.partitions(WORKFLOWS_TOPIC)):
        offset = 0
        while batch := await engine.log.read(WORKFLOWS_TOPIC, partition, offset):
            offset = batch[-1].offset + 1
            payloads = [decode(record.value).payload for record in batch]
            moves += [p for p in payloads if isinstance(p, TagMoved) and p.tag == tag]
    return moves


async def check_linear_history(api: Commands, engine: Engine, tag: str, count: int) -> None:
    """Each move names the one before it as what it replaced; the tag is at the last."""
    moves = await tag_moves(engine, tag)
    assert len(moves) == count
    assert (moves[0].previous_workflow_id, moves[0].previous_version) == (None, None)
    for before, after in pairwise(moves):
        assert (after.previous_workflow_id, after.previous_version) == (
            before.workflow_id,
            before.version,
        )
    now = await api.resolve_workflow(tag)
    assert (now["workflow_id"], now["version"]) == (moves[-1].workflow_id, moves[-1].version)


async def move_concurrently(apis: Sequence[Commands], tag: str, workflow_id: str) -> None:
    """Every API moves `tag` to each version of `workflow_id` at once."""
    versions = range(1, CREATIONS_PER_API + 1)
    await asyncio.gather(
        *(
            api.move_tag(tag, workflow_id, version, actor="t", trace_id="")
            for api in apis
            for version in versions
        )
    )


async def requests_of(engine: Engine, workflow_id: str) -> int:
    count = 0
    for partition in range(await engine.log.partitions(WORKFLOWS_TOPIC)):
        offset = 0
        while batch := await engine.log.read(WORKFLOWS_TOPIC, partition, offset):
            offset = batch[-1].offset + 1
            payloads = [decode(record.value).payload for record in batch]
            count += sum(
                isinstance(p, WorkflowCreateRequested) and p.workflow_id == workflow_id
                for p in payloads
            )
    return count


# --- embedded: the dev server, one process -------------------------------------------


@asynccontextmanager
async def dev_server(data_dir: Path) -> AsyncIterator[tuple[Engine, list[Commands]]]:
    """`aob server dev`'s engine, and two API front ends on it: concurrent requests
    that share no lock (the embedded log is single-process, so this is its case)."""
    engine = await Engine.open(Settings(data_dir=data_dir), "dev")
    await engine.start()
    try:
        yield engine, [Commands(engine), Commands(engine)]
    finally:
        await engine.stop()


async def test_concurrent_creators_get_distinct_consecutive_versions(tmp_path: Path) -> None:
    async with dev_server(tmp_path) as (engine, apis):
        told = await create_concurrently(apis, "w")
        await check_versions(apis[0], "w", told)
        await check_linear_history(apis[1], engine, "w", len(told))


async def test_concurrent_tag_moves_form_one_linear_history(tmp_path: Path) -> None:
    async with dev_server(tmp_path) as (engine, apis):
        await create_concurrently(apis[:1], "w")
        await move_concurrently(apis, "prod", "w")
        await check_linear_history(apis[0], engine, "prod", 2 * CREATIONS_PER_API)


async def test_the_dev_server_decides_in_its_own_process(tmp_path: Path) -> None:
    engine = await Engine.open(Settings(data_dir=tmp_path), "dev")
    await engine.start()
    try:
        api = Commands(engine)
        first = await api.create_workflow(definition("w", 0), tag="", actor="t", trace_id="")
        second = await api.create_workflow(definition("w", 1), tag=None, actor="t", trace_id="")
        assert (first["version"], first["tag"]) == (1, None)
        assert (second["version"], second["tag"]) == (2, "w")
        moved = await api.move_tag("w", "w", 1, actor="t", trace_id="")
        assert moved == {"tag": "w", "workflow_id": "w", "version": 1}
        assert (await api.resolve_workflow("w"))["version"] == 1
    finally:
        await engine.stop()


async def test_a_name_another_tenant_took_first_is_refused_by_its_writer(tmp_path: Path) -> None:
    """Both tenants ask at once: the decider gives the name to one, refuses the other."""
    async with dev_server(tmp_path) as (engine, apis):
        outcomes = await asyncio.gather(
            *(
                api.create_workflow(
                    definition("shared", 0), tag="", actor="t", trace_id="", tenant=tenant
                )
                for api, tenant in zip(apis, ("acme", "globex"), strict=True)
            ),
            return_exceptions=True,
        )
        created = [o for o in outcomes if isinstance(o, dict)]
        refused = [o for o in outcomes if isinstance(o, Problem)]
        assert len(created) == 1
        assert len(refused) == 1
        assert (refused[0].status, refused[0].slug) == (409, "name-taken")
        assert await requests_of(engine, "shared") == 2  # both asked; one decided


async def test_without_a_decider_the_api_answers_503_and_the_request_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No decider answers: the API says so (503); the request stays in the log and is
    decided when a decider runs."""
    monkeypatch.setattr("aob.platform.commands.DECISION_TIMEOUT", 0.3)
    engine = await Engine.open(Settings(data_dir=tmp_path), "dev")
    engine.decider = None  # as if the projector service were down
    await engine.start()
    try:
        with pytest.raises(Problem) as failed:
            await Commands(engine).create_workflow(
                definition("w", 0), tag="", actor="t", trace_id=""
            )
        assert (failed.value.status, failed.value.slug) == (503, "not-decided-yet")
    finally:
        await engine.stop()
    async with dev_server(tmp_path) as (_, apis):
        later = await apis[0].create_workflow(definition("w", 1), tag="", actor="t", trace_id="")
        assert later["version"] == 2  # the waiting request got version 1 meanwhile
        first = await apis[0].resolve_workflow("w", 1)
        assert first["definition"]["nodes"][0]["config"]["output"] == 0
