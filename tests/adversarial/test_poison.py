"""Issue 11, poison: a record that cannot be decoded or folded stopped the coordinator
and the projector at every start; a run output nested 5000 deep made encoding
RunCompleted fail and killed the coordinator for good. Against a live server, embedded
and on Kafka + PostgreSQL: poison goes to `aob.deadletter` with its reason (listed by
`GET /api/v1/admin/deadletters`), its run fails clearly, everybody else goes on, and a
kill -9 + restart neither stalls nor handles the poison again."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from aob.events.log.port import Append
from aob.events.types import RUNS_TOPIC, task_topic
from aob.platform.engine import open_log
from aob.platform.settings import Settings
from tests.adversarial.conftest import (
    ATTACKER,
    JQ_SETTINGS,
    NORMAL,
    VICTIM,
    HealthProbe,
    LiveServer,
    assert_within_usual,
    attack,
    baseline,
    failure_text,
    names_a_budget,
    submit,
    survives_restart,
    timed_run,
    wait_run,
)

pytestmark = pytest.mark.slow

# Avro single-object encoding: marker C3 01, then a schema fingerprint nobody knows
# (a writer of a newer version during a rolling upgrade), then whatever body.
UNKNOWN_FINGERPRINT = b"\xc3\x01" + os.urandom(8) + b"\x02\x04body"
# A completion from a worker written in another language that got the format wrong.
NOT_AVRO = b'{"type": "NodeCompleted", "node_id": "a", "output": 1}'

DEEP_OUTPUT = {
    "name": "poison-deep",
    "nodes": [{"id": "a", "type": "transform", "config": {"expr": "1"}}],
    "output": "reduce range(5000) as $i (null; [.])",
}
DEPTH_SETTINGS = (*JQ_SETTINGS, "AOB_JQ_MAX_DEPTH", "AOB_MAX_EVENT_BYTES", "deep", "depth")

HOLD = {
    "name": "poison-held",
    "nodes": [{"id": "wait", "type": "hitl", "config": {"message": "hold the run open"}}],
}


def append_raw(server: LiveServer, topic: str, key: str, value: bytes) -> None:
    """Append `value` as it is to the server's log (its topic prefix and backend), as a
    foreign producer would."""
    env = server.env
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]  # pydantic-settings' init option
        data_dir=Path(env["AOB_DATA_DIR"]),
        kafka_bootstrap=env.get("AOB_KAFKA_BOOTSTRAP"),
        topic_prefix=env.get("AOB_TOPIC_PREFIX", ""),
    )

    async def write() -> None:
        log = await open_log(settings, "adversarial-test")
        try:
            await log.append([Append(topic, key, value)])
        finally:
            await log.close()

    asyncio.run(write())


def inject(server: LiveServer, topic: str, key: str, value: bytes) -> None:
    """Put poison on the server's log. The embedded log is single-process (locked), so
    there the server is killed (-9) first and started again: the poison then waits at
    start, which is where it used to stop the coordinator and the projector for good.
    On Kafka another producer appends while the server runs."""
    if server.backend == "embedded":
        server.kill9()
        append_raw(server, topic, key, value)
        server.start()
    else:
        append_raw(server, topic, key, value)


def dead_letters(server: LiveServer) -> list[dict[str, Any]]:
    with server.client("admin") as admin:
        response = admin.get("/api/v1/admin/deadletters", params={"limit": 500})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def waiting(run: dict[str, Any]) -> bool:
    return run["status"] in ("waiting", "completed", "failed", "cancelled")


def test_an_output_nested_5000_deep_fails_its_run_only(server: LiveServer) -> None:
    outcome = attack(server, DEEP_OUTPUT, settings=DEPTH_SETTINGS)
    assert server.alive()
    assert outcome.bad["output"] is None


def test_kill_9_after_a_deep_output_and_restart(server: LiveServer) -> None:
    survives_restart(server, DEEP_OUTPUT, settings=DEPTH_SETTINGS)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(UNKNOWN_FINGERPRINT, id="unknown-fingerprint"),
        pytest.param(NOT_AVRO, id="not-avro"),
    ],
)
def test_an_undecodable_record_on_the_runs_topic_is_set_aside(
    server: LiveServer, value: bytes
) -> None:
    """The poison is keyed by a run of the attacker's that waits on an approval: that
    run fails with a reason, the victim's runs go on, replay for audit passes over it,
    and after kill -9 + restart the record is neither handled again nor stalls
    anything."""
    usual = baseline(server)
    with server.diagnosed(), server.client(ATTACKER) as attacker:
        run_id = submit(attacker, HOLD)
        wait_run(attacker, run_id, 30, until=waiting)
    inject(server, RUNS_TOPIC, run_id, value)
    with server.diagnosed(), server.client(ATTACKER) as attacker, server.client(VICTIM) as victim:
        with HealthProbe(server.url, server.pid) as probe:
            _, first = timed_run(victim, NORMAL, {"x": 1}, 30, probe)  # after catching up
            failed = wait_run(attacker, run_id, 30, probe=probe)
            victim_s, victim_run = timed_run(victim, NORMAL, {"x": 1}, 30, probe)
        probe.check()
        assert (first["status"], victim_run["status"]) == ("completed", "completed")
        assert_within_usual(server, victim_s, usual, "the victim's run")
        assert failed["status"] == "failed", failed
        assert (
            "undecodable" in failure_text(failed).lower()
            or "dead letter" in failure_text(failed).lower()
        ), failure_text(failed)
        letters = [letter for letter in dead_letters(server) if letter.get("run_id") == run_id]
        assert letters, dead_letters(server)
        assert all(letter["reason"] for letter in letters), letters

    if value is NOT_AVRO:  # the last case: replay for audit over both poison records
        if server.backend == "embedded":
            server.kill9()  # audited while stopped; the restart below starts it
        assert_audit_passes_over_poison(audit_verify(server))
    server.restart()
    with (
        server.diagnosed(),
        HealthProbe(server.url, server.pid) as probe,
        server.client(VICTIM) as victim,
    ):
        _, first = timed_run(victim, NORMAL, {"x": 1}, 30, probe)
        steady_s, steady = timed_run(victim, NORMAL, {"x": 1}, 30, probe)
        probe.check()
        assert (first["status"], steady["status"]) == ("completed", "completed")
        assert_within_usual(server, steady_s, usual, "a run after the restart")
        assert_not_handled_again(server, letters)


def positions(letters: list[dict[str, Any]]) -> set[str]:
    return {f"/{letter['source']['partition']}@{letter['source']['offset']}" for letter in letters}


def assert_not_handled_again(server: LiveServer, letters: list[dict[str, Any]]) -> None:
    """The restarted server's hosts start past the poison (offsets advanced): none of
    them sets it aside again. (Dead-letter ids are deterministic, so the listing would
    hide a repeat: the process's own log says what it set aside.)"""
    latest = (server.logs_dir / f"stderr.{server.starts}.log").read_text(errors="replace")
    again = [
        line[:300]
        for line in latest.splitlines()
        if "set aside" in line and any(where in line for where in positions(letters))
    ]
    assert not again, f"the poison was handled again after the restart: {again}"


def test_garbage_on_a_task_topic_does_not_stop_its_worker(server: LiveServer) -> None:
    """A task the hitl worker cannot handle: set aside, and the next task (the
    victim's approval) is still handled, before and after a restart."""
    server.heal()
    with server.diagnosed(), server.client(ATTACKER) as attacker:
        poisoned = submit(attacker, HOLD)
        wait_run(attacker, poisoned, 30, until=waiting)
    inject(server, task_topic("hitl"), poisoned, NOT_AVRO)
    with server.diagnosed(), server.client(VICTIM) as victim:
        with HealthProbe(server.url, server.pid) as probe:
            held = submit(victim, HOLD)
            run = wait_run(victim, held, 20, until=waiting, probe=probe)
        probe.check()
        assert run["status"] == "waiting", run
        assert _approvals(victim, held), "the victim's approval was never requested"
        letters = [
            letter
            for letter in dead_letters(server)
            if letter.get("source", {}).get("topic", "").endswith("aob.tasks.hitl")
        ]
        assert letters, dead_letters(server)

    server.restart()
    with server.diagnosed(), server.client(VICTIM) as victim:
        held_again = submit(victim, HOLD)
        assert wait_run(victim, held_again, 20, until=waiting)["status"] == "waiting"
        assert _approvals(victim, held_again)
        assert_not_handled_again(server, letters)


def _approvals(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/approvals", params={"run_id": run_id, "status": "any"})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return [a for a in items if a.get("run_id") == run_id]


def test_a_deep_output_leaves_no_unfoldable_record_behind(server: LiveServer) -> None:
    """The coordinator stays up: a run submitted after the deep one completes and
    /health reports every host task alive (not the 503 of a dead coordinator)."""
    with server.diagnosed(), server.client(ATTACKER) as attacker:
        bad = wait_run(attacker, submit(attacker, DEEP_OUTPUT), 30)
        assert bad["status"] == "failed"
        assert names_a_budget(failure_text(bad), *DEPTH_SETTINGS), failure_text(bad)
        good = wait_run(attacker, submit(attacker, NORMAL, {"x": 1}), 30)
        assert good["status"] == "completed"
        health = httpx.get(f"{server.url}/health", timeout=1.0)
        assert health.status_code == 200, health.text


def audit_verify(server: LiveServer) -> subprocess.CompletedProcess[str]:
    """`aob server audit verify` on the server's stores (an embedded server must be
    stopped first: its log has one owner)."""
    command = [
        str(Path(sys.executable).parent / "aob"),
        "server",
        "audit",
        "verify",
        "--data-dir",
        str(server.data_dir),
    ]
    return subprocess.run(
        command,
        env=server.env,
        cwd=server.data_dir.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_audit_passes_over_poison(done: subprocess.CompletedProcess[str]) -> None:
    """The read models rebuilt from the log, poison included, are identical to the live
    ones, and the audit names the records it set aside as the projector did."""
    out = done.stdout[-3000:]
    assert done.returncode == 0, (done.returncode, out, done.stderr[-2000:])
    assert "identical to the live read models" in out, out
    skipped = re.search(r"set aside (\d+) poison record", out)
    assert skipped is not None, out
    assert int(skipped.group(1)) >= 1, out
    assert "undecodable record" in out, out
    assert "dead-lettered by the projector" in out, out
