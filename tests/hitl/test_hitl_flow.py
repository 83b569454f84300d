"""Human approvals end to end: the real engine, the real HTTP API, a temp data dir."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from aob.events.codec import decode, encode
from aob.events.ids import new_event_id
from aob.events.log.port import Append, EventLog, TopicPartition
from aob.events.log.sqlite import SqliteEventLog
from aob.events.types import RUNS_TOPIC, ApprovalDecided, Event, NodeCompleted, task_topic
from aob.platform.approvals import Approvals
from aob.platform.problems import Problem
from aob.projections.runtime.timers import TimerService
from aob.workers.hitl.service import DECISIONS_GROUP, REQUESTS_GROUP
from tests.fanout.live import until
from tests.hitl.harness import node, review, running_aob
from tests.support.api import FINISHED


async def test_approve_pauses_the_run_then_follows_the_normal_path(aob):
    run_id = await aob.submit(review())
    [approval] = await aob.pending(run_id)
    assert approval["message"] == "Publish Q3?"
    assert approval["payload"] == {"title": "Q3", "words": 120}
    assert approval["status"] == "pending"
    run = await aob.run(run_id)
    assert run["status"] == "waiting"  # paused on the approval, not complete
    assert node(run, "gate")["status"] == "waiting"  # as its run is

    response = await aob.decide(
        approval["approval_id"], "approve", actor="alice", comments="ship it"
    )
    assert response.status_code == 200, response.text
    decided = response.json()
    assert (decided["status"], decided["decided_by"], decided["comments"]) == (
        "approved",
        "alice",
        "ship it",
    )

    run = await aob.finished(run_id)
    assert run["status"] == "completed"
    gate = run["output"]["gate"]
    assert gate["decision"] == "approve"
    assert (gate["decided_by"], gate["comments"], gate["timed_out"]) == ("alice", "ship it", False)
    assert gate["decided_at"] == decided["decided_at"]
    assert run["output"]["publish"] == "published"
    assert node(run, "revise")["status"] == "skipped"


async def test_reject_follows_the_rejection_path(aob):
    run_id = await aob.submit(review())
    [approval] = await aob.pending(run_id)
    response = await aob.decide(approval["approval_id"], "reject", actor="bob", comments="too long")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "rejected"

    run = await aob.finished(run_id)
    assert run["status"] == "completed"
    assert run["output"]["revise"] == "revised"
    assert run["output"]["gate"]["decision"] == "reject"
    assert node(run, "publish")["status"] == "skipped"


@pytest.mark.parametrize(
    ("on_timeout", "ran", "skipped"),
    [("approve", "publish", "revise"), ("reject", "revise", "publish")],
)
async def test_timeout_decides_as_configured(aob, on_timeout, ran, skipped):
    run_id = await aob.submit(review({"timeout_ms": 200, "on_timeout": on_timeout}))
    run = await aob.finished(run_id)
    assert run["status"] == "completed"
    gate = run["output"]["gate"]
    assert (gate["decision"], gate["decided_by"], gate["timed_out"]) == (
        on_timeout,
        "system:timeout",
        True,
    )
    assert node(run, ran)["status"] == "completed"
    assert node(run, skipped)["status"] == "skipped"

    [approval] = await aob.approvals(run_id=run_id, status="any")
    assert approval["deadline"] == approval["requested_at"] + 200
    assert approval["decided_at"] == gate["decided_at"] >= approval["deadline"]
    status = {"approve": "approved", "reject": "rejected"}[on_timeout]
    assert (approval["status"], approval["decision"]) == (status, on_timeout)


async def test_timeout_that_means_fail_fails_the_run(aob):
    run_id = await aob.submit(review({"timeout_ms": 200, "on_timeout": "fail"}))
    run = await aob.finished(run_id)
    assert run["status"] == "failed"
    assert run["error_node_id"] == "gate"
    assert "no decision by its deadline (on_timeout: fail)" in run["error"]
    assert node(run, "gate")["status"] == "failed"
    [approval] = await aob.approvals(run_id=run_id, status="any")
    assert (approval["decision"], approval["decided_by"]) == ("fail", "system:timeout")


WHO_DECIDED = "[.nodes.legal.decided_by, .nodes.finance.decided_by]"


def parallel() -> dict[str, Any]:
    """Two approvals side by side, joined: the run ends when both are decided."""
    return {
        "name": "two-keys",
        "nodes": [
            {"id": "start", "type": "noop", "config": {"output": 7}},
            {"id": "legal", "type": "hitl", "config": {"message": "Legal: {{ .nodes.start }}"}},
            {"id": "finance", "type": "hitl", "config": {"message": "Finance"}},
            {"id": "done", "type": "transform", "config": {"expr": WHO_DECIDED}},
        ],
        "edges": [
            {"from": "start", "to": "legal"},
            {"from": "start", "to": "finance"},
            {"from": "legal", "to": "done"},
            {"from": "finance", "to": "done"},
        ],
        "output": ".nodes.done",
    }


async def test_two_approvals_in_parallel(aob):
    run_id = await aob.submit(parallel())
    approvals = await aob.pending(run_id, count=2)
    by_node = {a["node_id"]: a for a in approvals}
    assert by_node["legal"]["message"] == "Legal: 7"
    assert by_node["legal"]["approval_id"] != by_node["finance"]["approval_id"]

    response = await aob.decide(by_node["finance"]["approval_id"], "approve", actor="fin")
    assert response.status_code == 200, response.text
    run = await aob.until(run_id, lambda run: node(run, "finance")["status"] == "completed")
    assert run["status"] == "waiting"  # legal still pending
    assert [a["node_id"] for a in await aob.approvals(run_id=run_id)] == ["legal"]

    response = await aob.decide(by_node["legal"]["approval_id"], "approve", actor="law")
    assert response.status_code == 200, response.text
    run = await aob.finished(run_id)
    assert (run["status"], run["output"]) == ("completed", ["law", "fin"])


async def test_a_second_decision_is_refused_with_the_first_in_the_body(aob):
    run_id = await aob.submit(review())
    [approval] = await aob.pending(run_id)
    first = await aob.decide(approval["approval_id"], "approve", actor="alice", comments="ok")
    assert first.status_code == 200
    await aob.finished(run_id)

    second = await aob.decide(approval["approval_id"], "reject", actor="bob")
    assert second.status_code == 409
    assert second.headers["content-type"] == "application/problem+json"
    body = second.json()
    assert body["type"].endswith("/already-decided")
    assert "already decided" in body["detail"]
    assert body["decision"]["decision"] == "approve"
    assert (body["decision"]["decided_by"], body["decision"]["comments"]) == ("alice", "ok")
    assert body["decision"]["decided_at"] == first.json()["decided_at"]
    decided = [e for e in await aob.events(run_id) if e["type"] == "ApprovalDecided"]
    assert len(decided) == 1  # the refused decision appended nothing


async def test_two_people_racing_exactly_one_wins(aob):
    run_id = await aob.submit(review())
    [approval] = await aob.pending(run_id)
    responses = await asyncio.gather(
        aob.decide(approval["approval_id"], "approve", actor="alice"),
        aob.decide(approval["approval_id"], "reject", actor="bob"),
    )
    assert sorted(r.status_code for r in responses) == [200, 409]
    [winner] = [r.json() for r in responses if r.status_code == 200]
    [loser] = [r.json() for r in responses if r.status_code == 409]
    assert loser["decision"]["decided_by"] == winner["decided_by"]
    assert loser["decision"]["event_id"] == winner["decision_event_id"]
    run = await aob.finished(run_id)
    assert run["output"]["gate"]["decided_by"] == winner["decided_by"]
    completions = [
        e
        for e in await aob.events(run_id)
        if e["type"] == "NodeCompleted" and e["data"]["node_id"] == "gate"
    ]
    assert len(completions) == 1


async def fire_deadline(
    aob, run_id: str, timeout: float = 10.0, *, unless_finished: bool = False
) -> None:
    """Fire the run's approval deadline now, as the timer service does once it falls due
    (its clock an hour ahead): once the coordinator's timer is in the read models.
    `unless_finished`: or stop once the run has finished (a person decided first, and
    the run ended before its timer reached the read models: it has none due now)."""
    timers = TimerService(aob.engine.log, aob.engine.read_models, clock=overdue_clock)
    async with asyncio.timeout(timeout):
        while True:
            if await timers.fire_due():
                return
            if unless_finished and (await aob.run(run_id))["status"] in FINISHED:
                return
            await asyncio.sleep(0.02)


async def decided_by_the_deadline(aob, run_id: str, timeout: float = 10.0) -> None:
    """Wait until the coordinator has recorded the deadline's decision."""
    async with asyncio.timeout(timeout):
        while True:
            if any(
                d["data"]["decided_by"] == "system:timeout" for d in await _decisions(aob, run_id)
            ):
                return
            await asyncio.sleep(0.02)


def overdue_clock() -> int:
    """A clock two hours ahead: every approval of the race tests is overdue by it."""
    return time.time_ns() // 1_000_000 + 7_200_000


async def _decisions(aob, run_id: str) -> list[dict[str, Any]]:
    return [e for e in await aob.events(run_id) if e["type"] == "ApprovalDecided"]


class StaleReads:
    """The read models as one decider saw them before the other's decision was projected:
    `stale` answers the first call of its method, the store every later one."""

    def __init__(self, store: Any, method: str, stale: Any) -> None:
        self.store, self.method, self.stale = store, method, [stale]

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.store, name)
        if name != self.method:
            return real

        async def first_stale(*args: Any, **kwargs: Any) -> Any:
            return self.stale.pop() if self.stale else await real(*args, **kwargs)

        return first_stale


@pytest.mark.parametrize("first", ["timeout", "human"])
async def test_a_decision_racing_the_timeout_exactly_one_wins(aob, first):
    """The deadline and a person decide at once, both past the read-model check (the
    second saw the approval still pending), so both decisions reach the log. The first
    wins; the person, if second, is told who won."""
    run_id = await aob.submit(review({"timeout_ms": 3_600_000}))
    [approval] = await aob.pending(run_id)
    store = aob.engine.read_models
    approvals = Approvals(aob.engine)
    if first == "timeout":
        await fire_deadline(aob, run_id)
        await decided_by_the_deadline(aob, run_id)
        approvals.read = StaleReads(store, "get_approval", approval)
    human_result: dict[str, Any] | Problem
    try:
        human_result = await approvals.decide(
            approval["approval_id"], "approve", "", actor="alice", roles=[], trace_id="t"
        )
    except Problem as problem:
        human_result = problem
    if first == "human":
        await fire_deadline(aob, run_id)  # the deadline's timer, fired after the decision

    decisions = await _decisions(aob, run_id)
    # The deadline decides only an approval still pending when its timer fires: after
    # a person's decision it decides nothing (one timer mechanism, in the fold).
    assert [d["data"]["decided_by"] for d in decisions] == (
        ["system:timeout", "alice"] if first == "timeout" else ["alice"]
    )
    run = await aob.finished(run_id)
    gate = run["output"]["gate"]
    if first == "timeout":
        assert isinstance(human_result, Problem)
        assert human_result.status == 409
        assert "another decision was recorded first" in human_result.detail
        assert human_result.extra["decision"]["decided_by"] == "system:timeout"
        assert human_result.extra["decision"]["event_id"] == decisions[0]["event_id"]
        assert (gate["decided_by"], gate["decision"]) == ("system:timeout", "reject")
        assert run["output"]["revise"] == "revised"
    else:
        assert isinstance(human_result, dict)
        assert human_result["decided_by"] == "alice"
        assert human_result["decision_event_id"] == decisions[0]["event_id"]
        assert (gate["decided_by"], gate["decision"]) == ("alice", "approve")
        assert run["output"]["publish"] == "published"
    completions = [
        e
        for e in await aob.events(run_id)
        if e["type"] == "NodeCompleted" and e["data"]["node_id"] == "gate"
    ]
    assert len(completions) == 1


async def test_over_http_a_decision_racing_the_timeout_gets_a_clear_answer(aob):
    """Through the HTTP stack the race's order is up to scheduling: whoever wins,
    the run follows it and a losing person gets 409 naming the winner."""
    for _ in range(3):
        run_id = await aob.submit(review({"timeout_ms": 3_600_000}))
        [approval] = await aob.pending(run_id)
        response, _ = await asyncio.gather(
            aob.decide(approval["approval_id"], "approve", actor="alice"),
            fire_deadline(aob, run_id, unless_finished=True),
        )
        run = await aob.finished(run_id)
        winner = (await _decisions(aob, run_id))[0]["data"]["decided_by"]
        assert run["output"]["gate"]["decided_by"] == winner
        if winner == "alice":
            assert response.status_code == 200, response.text
        else:
            assert response.status_code == 409, response.text
            assert response.json()["decision"]["decided_by"] == "system:timeout"


async def test_a_decision_on_a_cancelled_run_is_refused(aob):
    run_id = await aob.submit(review())
    [approval] = await aob.pending(run_id)
    response = await aob.client.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "stop"})
    assert response.status_code == 202
    assert (await aob.finished(run_id))["status"] == "cancelled"

    response = await aob.decide(approval["approval_id"], "approve")
    assert response.status_code == 409
    body = response.json()
    assert body["type"].endswith("/run-finished")
    assert body["run_status"] == "cancelled"
    assert "is cancelled" in body["detail"]
    assert await aob.approvals(run_id=run_id) == []  # gone from the inbox


async def test_restart_while_pending_fires_the_overdue_timeout(tmp_path):
    data_dir = tmp_path / "data"
    async with running_aob(data_dir) as aob:
        # Long enough to stop the engine in time even on a loaded machine.
        run_id = await aob.submit(review({"timeout_ms": 5_000, "on_timeout": "reject"}))
        [approval] = await aob.pending(run_id)
    stopped_at = time.time_ns() // 1_000_000
    deadline: int = approval["deadline"]
    assert stopped_at < deadline  # stopped before the deadline fell due

    async def overdue() -> bool:
        return time.time_ns() // 1_000_000 > deadline

    # The behaviour under test: the deadline passes on the wall clock while nobody runs.
    await until(overdue, "the approval's deadline passed", timeout=10)

    restarted_at = time.time_ns() // 1_000_000
    async with running_aob(data_dir) as aob:
        run = await aob.finished(run_id)
        assert run["status"] == "completed"
        assert run["output"]["revise"] == "revised"
        gate = run["output"]["gate"]
        assert (gate["decided_by"], gate["timed_out"]) == ("system:timeout", True)
        [decided] = [e for e in await aob.events(run_id) if e["type"] == "ApprovalDecided"]
        assert decided["occurred_at"] >= restarted_at  # fired by the restarted service


async def test_a_decision_made_while_the_service_was_down_is_carried_out_on_restart(tmp_path):
    """As in a cluster where the API takes a decision while the HITL worker is down."""
    data_dir = tmp_path / "data"
    async with running_aob(data_dir) as aob:
        run_id = await aob.submit(review())
        [approval] = await aob.pending(run_id)
    decided = ApprovalDecided(run_id, approval["approval_id"], "reject", "bob", "offline")
    event = Event(new_event_id(), run_id, time.time_ns() // 1_000_000, decided, actor="bob")
    event_log = await SqliteEventLog.open(data_dir / "log.db")
    try:
        await event_log.append([Append(RUNS_TOPIC, run_id, encode(event))])
    finally:
        await event_log.close()

    async with running_aob(data_dir) as aob:
        run = await aob.finished(run_id)
        assert run["output"]["revise"] == "revised"
        assert (run["output"]["gate"]["decided_by"], run["output"]["gate"]["comments"]) == (
            "bob",
            "offline",
        )


async def test_a_decision_read_again_is_not_answered_twice(tmp_path):
    """A new owner of a decisions partition may read the group's offsets before its
    predecessor's last commit shows (Kafka applies a transaction's offsets a moment
    after it ends): the decision is read again, its outcome is in the log already, and
    nothing is appended twice."""
    data = tmp_path / "data"
    async with running_aob(data) as aob:
        run_id = await aob.submit(review())
        [approval] = await aob.pending(run_id)
        assert (await aob.decide(approval["approval_id"], "approve")).status_code == 200
        assert (await aob.finished(run_id))["status"] == "completed"
    runs_end = await rewind(data, DECISIONS_GROUP, RUNS_TOPIC)

    async with running_aob(data) as aob:
        live = aob.engine.log
        assert await read_again(live, DECISIONS_GROUP, RUNS_TOPIC) == runs_end  # none appended
        records = [r for p in runs_end for r in await live.read(RUNS_TOPIC, p, 0, 10_000)]
    outcomes = [decode(r.value) for r in records]
    gate = [
        e for e in outcomes if isinstance(e.payload, NodeCompleted) and e.payload.node_id == "gate"
    ]
    assert len(gate) == 1


async def test_a_task_read_again_is_not_asked_twice(tmp_path):
    """The same for the requests: a task read again whose request the log holds."""
    data = tmp_path / "data"
    async with running_aob(data) as aob:
        run_id = await aob.submit(review())
        await aob.pending(run_id)
    runs_end = await rewind(data, REQUESTS_GROUP, task_topic("hitl"))

    async with running_aob(data) as aob:
        live = aob.engine.log
        assert await read_again(live, REQUESTS_GROUP, task_topic("hitl")) == runs_end  # none
        assert len(await aob.pending(run_id)) == 1


async def rewind(data: Path, group: str, topic: str) -> dict[int, int]:
    """`group`'s offsets of `topic` set back to 0 (the server stopped): as a new owner
    reading stale offsets would. Returns aob.runs's end offsets."""
    async with await SqliteEventLog.open(data / "log.db") as event_log:
        partitions = range(await event_log.partitions(topic))
        await event_log.commit(group, {TopicPartition(topic, p): 0 for p in partitions})
        return await event_log.end_offsets(RUNS_TOPIC)


async def read_again(live: EventLog, group: str, topic: str) -> dict[int, int]:
    """Once `group` has read `topic` again to its end; returns aob.runs's end offsets."""
    ends = await live.end_offsets(topic)

    async def caught_up() -> bool:
        return await live.committed(group, topic) == ends

    await until(caught_up, f"{group} reading {topic} again to its end")
    return await live.end_offsets(RUNS_TOPIC)
