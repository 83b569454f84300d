"""Poison records on aob.runs and aob.tasks.transform, through the real embedded engine:
each is set aside with its reason, its run fails saying why, committed offsets move
past it, every other run goes on, and a restart neither hangs nor does anything twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from aob.events.types import Event, task_topic
from aob.projections.coordinator.state import RunState
from aob.projections.runtime import coordinator as coordinator_module
from aob.projections.runtime.coordinator import GROUP as COORDINATOR
from aob.projections.runtime.deadletter import UNDECODABLE
from tests.poison.harness import GARBAGE, RUNS_TOPIC, UNKNOWN_FINGERPRINT, PoisonAob, engine

TRANSFORM_WORKER = "aob-worker-transform"


async def failed_with(aob: PoisonAob, run_id: str, *needles: str) -> str:
    run = await aob.finished(run_id)
    assert run["status"] == "failed", run
    for needle in needles:
        assert needle in run["error"], run["error"]
    assert "set aside as dead letter" in run["error"]
    error: str = run["error"]
    return error


@pytest.mark.parametrize("value", [GARBAGE, UNKNOWN_FINGERPRINT], ids=["garbage", "fingerprint"])
@pytest.mark.parametrize("topic", [RUNS_TOPIC, task_topic("transform")])
async def test_an_undecodable_record_is_set_aside_and_fails_its_run_only(
    tmp_path: Path, topic: str, value: bytes
) -> None:
    async with engine(tmp_path) as aob:
        run_id = await aob.waiting_run()
        poison = await aob.append(topic, run_id, value)
        where = f"{topic}/{poison.partition}@{poison.offset}"
        await failed_with(aob, run_id, f"could not process {UNDECODABLE} at {where}")
        await aob.normal_run_completes()
        assert await aob.healthy()
        letters = await aob.letters_of(poison)
        assert letters, await aob.dead_letters()
        assert all(letter["run_id"] == run_id and letter["reason"] for letter in letters)
        group = COORDINATOR if topic == RUNS_TOPIC else TRANSFORM_WORKER
        assert group in {letter["service"] for letter in letters}
        assert await aob.committed(group, poison) > poison.offset
        count = len(await aob.dead_letters())
    async with engine(tmp_path) as aob:  # the restart neither hangs nor sets it aside again
        await aob.normal_run_completes()
        assert len(await aob.dead_letters()) == count
        assert (await aob.run(run_id))["status"] == "failed"


async def test_a_record_whose_fold_raises_fails_that_run_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real fold has no failing input known: this one fails for one run's events."""
    real_fold = coordinator_module.fold  # type: ignore[attr-defined]
    doomed: set[str] = set()

    def fold(state: RunState | None, event: Event) -> tuple[RunState | None, list[Event]]:
        if event.key in doomed and event.type == "RunCancelRequested":
            raise RuntimeError("bug in the fold")
        return real_fold(state, event)

    monkeypatch.setattr(coordinator_module, "fold", fold)
    async with engine(tmp_path) as aob:
        run_id = await aob.waiting_run()
        doomed.add(run_id)
        response = await aob.client.post(f"/api/v1/runs/{run_id}/cancel", json={})
        assert response.status_code in (200, 202), response.text
        await failed_with(aob, run_id, "could not process RunCancelRequested", "bug in the fold")
        await aob.normal_run_completes()
        [letter] = [x for x in await aob.dead_letters() if x["service"] == COORDINATOR]
        assert letter["type"] == "RunCancelRequested"
        assert "RuntimeError: bug in the fold" in letter["reason"]
    monkeypatch.setattr(coordinator_module, "fold", real_fold)
    async with engine(tmp_path) as aob:  # recovery folds past it
        await aob.normal_run_completes()
        assert (await aob.run(run_id))["status"] == "failed"


async def test_an_admin_lists_and_replays_a_dead_letter(tmp_path: Path) -> None:
    async with engine(tmp_path) as aob:
        run_id = await aob.waiting_run()
        poison = await aob.append(RUNS_TOPIC, run_id, GARBAGE)
        await aob.finished(run_id)
        [letter] = [x for x in await aob.letters_of(poison) if x["service"] == COORDINATOR]
        page = await aob.client.get("/api/v1/admin/deadletters", params={"limit": 1})
        assert page.json()["next_cursor"] is not None  # the projector set it aside too
        replayed = await aob.client.post(f"/api/v1/admin/deadletters/{letter['id']}/replay")
        assert replayed.status_code == 200, replayed.text
        where = replayed.json()
        assert (where["topic"], where["partition"]) == (RUNS_TOPIC, poison.partition)
        [record] = await aob.engine.log.read(RUNS_TOPIC, where["partition"], where["offset"], 1)
        assert (record.key, record.value) == (run_id, GARBAGE)
        missing = await aob.client.post("/api/v1/admin/deadletters/0-99999/replay")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        bad = await aob.client.get("/api/v1/admin/deadletters", params={"cursor": "x"})
        assert bad.status_code == 400
