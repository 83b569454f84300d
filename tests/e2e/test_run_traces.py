"""One trace id follows a run through timers: a retry's TimerFired and the
NodeScheduled it leads to carry the run's trace, like everything else of the run."""

from __future__ import annotations

from tests.e2e.conftest import Backend


async def test_retry_timers_keep_the_runs_trace(backend: Backend) -> None:
    retry = {"max_attempts": 3, "initial_backoff_ms": 20}
    flaky = {"id": "f", "type": "flaky", "config": {"fail_attempts": 2}, "retry": retry}
    run_id = await backend.submit({"name": "traced", "nodes": [flaky], "output": ".nodes.f"})
    run = await backend.wait(run_id)
    assert run["status"] == "completed", run
    assert run["trace_id"]
    events = await backend.events(run_id)
    fired = [ev for ev in events if ev["type"] == "TimerFired"]
    assert len(fired) == 2
    assert {ev["trace_id"] for ev in events} == {run["trace_id"]}
