"""An event over AOB_MAX_EVENT_BYTES never reaches the log: the run that would have
written it fails, naming the setting, and every other run goes on."""

from __future__ import annotations

from pathlib import Path

from tests.poison.harness import NORMAL, engine

MAX = 64 * 1024
BIG = '"x" * 15000'
# Five branches with 15 KB outputs each (under the 16 KB inline threshold, so they
# travel in events) feed one join that reads all five: its task would carry them all,
# ~75 KB (a task carries only the outputs its programs read).
READ_ALL = "[" + ", ".join(f".nodes.b{i}" for i in range(5)) + "] | length"
WIDE = {
    "name": "wide",
    "nodes": [
        *({"id": f"b{i}", "type": "transform", "config": {"expr": BIG}} for i in range(5)),
        {"id": "join", "type": "transform", "config": {"expr": READ_ALL}},
    ],
    "edges": [{"from": f"b{i}", "to": "join"} for i in range(5)],
}


async def test_an_event_over_the_maximum_fails_its_run_and_others_go_on(tmp_path: Path) -> None:
    async with engine(tmp_path, max_event_bytes=MAX) as aob:
        run = await aob.finished(await aob.submit(WIDE))
        assert run["status"] == "failed"
        assert "AOB_MAX_EVENT_BYTES" in run["error"]
        assert f"({MAX} bytes" in run["error"]
        await aob.normal_run_completes()
        assert await aob.healthy()


async def test_a_submission_over_the_maximum_is_refused_with_413_and_records_nothing(
    tmp_path: Path,
) -> None:
    async with engine(tmp_path, max_event_bytes=MAX) as aob:
        body = {"definition": NORMAL, "inputs": {"x": 1, "blob": "y" * MAX}}
        response = await aob.client.post("/api/v1/runs", json=body)
        assert response.status_code == 413, response.text
        problem = response.json()
        assert problem["type"].endswith("/event-too-large")
        assert "AOB_MAX_EVENT_BYTES" in problem["detail"]
        listed = await aob.client.get("/api/v1/runs")
        assert listed.json()["items"] == []
        await aob.normal_run_completes()
