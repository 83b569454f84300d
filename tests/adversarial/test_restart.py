"""Issue 11, "nothing hangs again after a restart": before the fixes a restarted server
froze again on the event that froze it. Here the attacks have already failed on their
budgets (an output over the size cap, a backtracking regex in jq's `test`, a runaway
`{{ }}` template in an agent prompt); then the server is killed (-9) and started on the
same data, embedded and on Kafka + PostgreSQL. /health answers within 1 s from its first
answer on, another tenant's run keeps its pace, and the failed runs stay as they were:
not one record more in their log (nothing is executed again, nothing waits on them).

The attacks run together and share one restart per backend (a restart costs seconds);
each attack's own checks are in test_jq.py and test_regex.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.adversarial.conftest import (
    ATTACKER,
    JQ_SETTINGS,
    NORMAL,
    VICTIM,
    HealthProbe,
    LiveServer,
    assert_within_usual,
    baseline,
    failure_text,
    names_a_budget,
    submit,
    timed_run,
    wait_run,
)
from tests.adversarial.test_jq import LONG, one_node, transform
from tests.adversarial.test_regex import EVIL, REGEX_LIMITS, TEXT, jq_test

pytestmark = pytest.mark.slow

# (definition, inputs, what a failure names) of each attack.
ATTACKS: dict[str, tuple[dict[str, Any], Any, tuple[str, ...]]] = {
    "output size": (transform("[range(1e7)]", "restart-output"), None, JQ_SETTINGS),
    "regex": (jq_test(EVIL), {"s": TEXT}, REGEX_LIMITS),
    "prompt template": (one_node("agent", {"prompt": f"rank {{{{ {LONG} }}}}"}), None, JQ_SETTINGS),
}


def log_history(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """Every record of the run in the log, duplicates too (not the read models)."""
    response = client.get(
        f"/api/v1/runs/{run_id}/events", params={"source": "log", "limit": 10_000}
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_failed_attacks_do_not_hang_a_restarted_server(server: LiveServer) -> None:
    with server.diagnosed():
        usual = baseline(server)
        with server.client(ATTACKER) as attacker:
            ids = {
                what: submit(attacker, definition, inputs)
                for what, (definition, inputs, _) in ATTACKS.items()
            }
            failed = {what: wait_run(attacker, run_id, 30) for what, run_id in ids.items()}
            for what, run in failed.items():
                assert run["status"] == "failed", (what, run["status"], failure_text(run))
                assert names_a_budget(failure_text(run), *ATTACKS[what][2]), (
                    what,
                    failure_text(run),
                )
            before = {what: log_history(attacker, run_id) for what, run_id in ids.items()}

        server.restart()
        with (
            HealthProbe(server.url, server.pid) as probe,
            server.client(ATTACKER) as attacker,
            server.client(VICTIM) as victim,
        ):
            # The first run after a restart also waits for the hosts to catch up.
            _, first = timed_run(victim, NORMAL, {"x": 1}, 30, probe)
            steady_s, steady = timed_run(victim, NORMAL, {"x": 1}, 30, probe)
            after = {
                what: attacker.get(f"/api/v1/runs/{run_id}").json() for what, run_id in ids.items()
            }
            history = {what: log_history(attacker, run_id) for what, run_id in ids.items()}
        probe.check()
    assert (first["status"], steady["status"]) == ("completed", "completed")
    assert_within_usual(server, steady_s, usual, "after the restart the victim's run")
    for what in ATTACKS:
        assert (after[what]["status"], after[what]["error"]) == ("failed", failed[what]["error"]), (
            what
        )
        assert history[what] == before[what], f"{what}: {_changed(before[what], history[what])}"


def _changed(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """What the restarted server changed in a failed run's log."""
    added = [(e["offset"], e["type"]) for e in after[len(before) :]]
    if added:
        return f"the restarted server appended to the failed run's log: {added}"
    changed = [i for i, (old, new) in enumerate(zip(before, after, strict=False)) if old != new]
    if changed:
        first = changed[0]
        return f"the failed run's log changed at record {first}: {before[first]} -> {after[first]}"
    lost = [(e["offset"], e["type"]) for e in before[len(after) :]]
    return f"records of the failed run's log are gone after the restart: {lost}"
