"""`aob replay RUN [--from-event N]`: a new run forked from a point of a run's history."""

from __future__ import annotations

from typing import Any

from tests.cli.conftest import Cli
from tests.fanout.live import FAILING, LiveServer

LOOP: dict[str, Any] = {
    "name": "loop",
    "nodes": [
        {"id": "start", "type": "noop", "config": {"output": 2}},
        {
            "id": "tick",
            "type": "transform",
            "config": {"expr": "(.nodes.tick // .nodes.start) - 1"},
        },
        {"id": "done", "type": "noop"},
    ],
    "edges": [
        {"from": "start", "to": "tick"},
        {"from": "tick", "to": "tick", "when": ".nodes.tick > 0", "loop": {"max_iterations": 5}},
        {"from": "tick", "to": "done"},
    ],
}


def offset_after(events: list[dict[str, Any]], event_type: str, node_id: str) -> int:
    offset: int = next(
        e["offset"]
        for e in events
        if e["type"] == event_type and e["data"].get("node_id") == node_id
    )
    return offset


def test_replay_from_an_event_keeps_what_had_completed(aob: Cli, server: LiveServer) -> None:
    run_id = server.submit(FAILING)
    server.wait_finished(run_id)
    history = server.events(run_id)
    n = offset_after(history, "NodeCompleted", "ok")

    replayed = aob("replay", run_id, "--from-event", str(n), "-o", "json").json()
    assert replayed["replay_of"] == run_id
    assert replayed["from_event"] == n
    assert replayed["seeded_nodes"] == ["ok"]
    new_run = replayed["run_id"]
    assert new_run != run_id
    server.wait_finished(new_run)
    submitted = server.events(new_run)[0]
    assert submitted["type"] == "RunSubmitted"
    assert submitted["data"]["definition"] == FAILING
    assert submitted["data"]["checkpoint"] == {
        "run_id": run_id,
        "from_event": n,
        "outputs": {"ok": 1},
    }

    text = aob("replay", run_id, "--from-event", str(n))
    assert text.code == 0
    assert text.out.strip().endswith(f"replays {run_id} (1 node(s) kept their outputs)")

    followed = aob("replay", run_id, "-f")  # from the start: it fails again, as before
    assert followed.code == 1
    assert "boom" in followed.out


def test_seeded_nodes_do_not_run_again(server: LiveServer) -> None:
    run_id = server.submit(FAILING)
    server.wait_finished(run_id)
    n = offset_after(server.events(run_id), "NodeCompleted", "ok")
    with server.client() as client:
        new_run = client.post(f"/api/v1/runs/{run_id}/replay", json={"from_event": n}).json()
    server.wait_finished(new_run["run_id"])
    scheduled = [
        e["data"]["node_id"]
        for e in server.events(new_run["run_id"])
        if e["type"] == "NodeScheduled"
    ]
    assert scheduled == ["boom"]


def test_replay_refuses_events_the_run_does_not_have(aob: Cli, server: LiveServer) -> None:
    run_id = server.submit(FAILING)
    server.wait_finished(run_id)
    history = server.events(run_id)
    first, last = history[0]["offset"], history[-1]["offset"]
    beyond = aob("replay", run_id, "--from-event", str(last + 1000))
    assert beyond.code == 2  # invalid input (422), as `aob --help` documents
    assert beyond.err == f"aob: run {run_id!r} has events {first} to {last}, not {last + 1000}\n"
    unknown = aob("replay", "run_nope")
    assert (unknown.code, unknown.err) == (3, "aob: no run 'run_nope'\n")
