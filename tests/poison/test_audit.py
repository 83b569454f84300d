"""Replay for audit over a log holding poison: the rebuild sets aside what the live
projector set aside (an undecodable record, an event the store refuses), so `verify`
still finds the rebuilt read models identical, and says which records it skipped; a
run's history from the log shows the undecodable record instead of failing on it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from aob.events.log.port import Record
from aob.events.types import Event, RunSubmitted
from aob.platform.__main__ import main
from aob.platform.audit import fresh_read_models, run_history, verify
from aob.projections.readmodels.inplace import InPlaceReadModels
from aob.projections.readmodels.port import ThreadedReadModels
from aob.projections.runtime.deadletter import UNDECODABLE
from tests.poison.harness import GARBAGE, NORMAL, RUNS_TOPIC, PoisonAob, engine

REFUSED = {**NORMAL, "name": "refused-by-the-store"}


@pytest.fixture(autouse=True)
def embedded_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit commands read their settings from the environment: none of a cluster's."""
    monkeypatch.delenv("AOB_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("AOB_DATABASE_URL", raising=False)


async def verified(aob: PoisonAob) -> Any:
    async with fresh_read_models(aob.engine.settings) as (fresh, _):
        return await verify(aob.engine.log, aob.engine.read_models, fresh)


async def poisoned_run(aob: PoisonAob) -> tuple[str, Record]:
    """A waiting run with garbage on its partition, once the services set it aside."""
    run_id = await aob.waiting_run()
    poison = await aob.append(RUNS_TOPIC, run_id, GARBAGE)
    assert (await aob.finished(run_id))["status"] == "failed"
    await aob.normal_run_completes()  # the projector is past the poison
    return run_id, poison


async def test_verify_sets_an_undecodable_record_aside_as_the_projector_did(
    tmp_path: Path,
) -> None:
    async with engine(tmp_path) as aob:
        run_id, poison = await poisoned_run(aob)
        outcome = await verified(aob)
        history = await run_history(aob.engine.log, run_id)

    assert outcome.equal, outcome.summary()
    [skipped] = outcome.set_aside
    assert (skipped.topic, skipped.partition, skipped.offset) == (
        poison.topic,
        poison.partition,
        poison.offset,
    )
    assert skipped.reason.startswith(f"{UNDECODABLE}: CodecError")
    assert skipped.dead_lettered  # the live projector's dead letter is in the log
    summary = outcome.summary()
    assert "identical to the live read models" in summary
    assert "set aside 1 poison record(s)" in summary
    assert f"{RUNS_TOPIC}[{poison.partition}]@{poison.offset}" in summary

    # The run's history from the log: the poison in its place, then the run's failure.
    kinds = [(row["offset"], row["type"]) for row in history]
    assert (poison.offset, UNDECODABLE) in kinds
    assert kinds[-1][1] == "RunFailed"
    assert [row["offset"] for row in history] == sorted(row["offset"] for row in history)


def test_the_audit_commands_pass_over_poison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def poison_then_stop() -> tuple[str, Record]:
        async with engine(tmp_path) as aob:  # stopped after: the log has one owner
            return await poisoned_run(aob)

    run_id, poison = asyncio.run(poison_then_stop())
    data = ["--data-dir", str(tmp_path)]

    assert main(["audit", "verify", *data]) == 0
    out = capsys.readouterr().out
    assert "identical to the live read models" in out
    assert f"@{poison.offset} ({UNDECODABLE}: CodecError" in out
    assert "dead-lettered by the projector" in out

    assert main(["audit", "history", run_id, *data]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(UNDECODABLE in line for line in lines), lines


Apply = Callable[[ThreadedReadModels, Sequence[tuple[Any, Event]]], Awaitable[None]]


def _refusing(real_apply: Apply) -> Apply:
    async def refusing(self: ThreadedReadModels, batch: Sequence[tuple[Any, Event]]) -> None:
        for _, event in batch:
            payload = event.payload
            if isinstance(payload, RunSubmitted) and payload.definition == REFUSED:
                raise ValueError("this store cannot hold that run")
        await real_apply(self, batch)

    return refusing


async def test_verify_sets_aside_an_event_the_store_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event that decodes but that the store cannot apply (both the live store and the
    fresh one refuse it): set aside live, set aside in the rebuild, nothing differs."""
    # The live engine's store (in place) and the rebuild's (threaded) both refuse it.
    for store_class in (ThreadedReadModels, InPlaceReadModels):
        monkeypatch.setattr(store_class, "apply", _refusing(store_class.apply))
    async with engine(tmp_path) as aob:
        refused = await aob.submit(REFUSED, {"x": 1})
        await aob.normal_run_completes()
        letters = [item for item in await aob.dead_letters() if item.get("run_id") == refused]
        assert letters, await aob.dead_letters()
        outcome = await verified(aob)

    assert outcome.equal, outcome.summary()
    assert [s.reason for s in outcome.set_aside] == [
        "cannot project RunSubmitted: ValueError: this store cannot hold that run"
    ]
    assert outcome.set_aside[0].dead_lettered
    assert outcome.tables["runs"] >= 1
