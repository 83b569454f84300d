"""Recovery's divergence check through the real entry points (issue 14).

A data dir with a real run's log, its coordinator changelog lost (as after restoring
a backup of the log alone), is served again: with the fold unchanged `aob server dev`
re-folds the log silently and serves on; with a fold altered to decide differently
the coordinator host dies (/health 503) and the server exits 70, naming the run and
the event; `aob server audit verify` reports the divergence with exit 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aob.events.codec import decode
from aob.events.types import NodeScheduled, Payload, RunSubmitted
from aob.platform.serve import EXIT_HOST_DIED
from aob.projections.coordinator import fold as fold_module
from aob.projections.runtime.changelog import CHANGELOG_TOPIC
from tests.poison.harness import engine

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "order-triage.yaml"

# Run before the entry point in a subprocess: the fold now configures tasks differently.
ALTER_THE_FOLD = """
import dataclasses
from aob.events.types import NodeScheduled
from aob.projections.coordinator import fold as fold_module

_emit = fold_module._Step.emit

def _altered(step, payload):
    if isinstance(payload, NodeScheduled):
        payload = dataclasses.replace(payload, config={"changed": True})
    _emit(step, payload)

fold_module._Step.emit = _altered
"""


def aob_server(args: list[str], *, altered: bool = False) -> subprocess.CompletedProcess[str]:
    """`aob server ARGS` in a subprocess (its real entry point), the fold altered or not."""
    script = (ALTER_THE_FOLD if altered else "") + textwrap.dedent(
        f"""
        import sys
        from aob.platform.__main__ import main
        sys.exit(main({args!r}))
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def served_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir where the example ran to its end on `aob server dev`."""
    data = tmp_path_factory.mktemp("recovery") / "data"
    done = aob_server(
        ["dev", "--data-dir", str(data), "--port", "0", "--run", str(EXAMPLE), "--exit"]
    )
    assert done.returncode == 0, done.stderr
    return data


def without_changelog(data: Path, tmp_path: Path) -> Path:
    """A copy of `data` whose coordinator changelog is lost."""
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(data), str(copy)], check=True)
    with contextlib.closing(sqlite3.connect(copy / "log.db")) as db, db:
        db.execute("DELETE FROM records WHERE topic = ?", (CHANGELOG_TOPIC,))
    return copy


def run_ids(data: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(data / "log.db")) as db:
        rows = db.execute("SELECT value FROM records WHERE topic = 'aob.runs'").fetchall()
    events = [decode(value) for (value,) in rows]
    return [e.key for e in events if isinstance(e.payload, RunSubmitted)]


def test_an_unaltered_fold_recovers_silently_and_serves_on(
    served_once: Path, tmp_path: Path
) -> None:
    data = without_changelog(served_once, tmp_path)
    done = aob_server(
        ["dev", "--data-dir", str(data), "--port", "0", "--run", str(EXAMPLE), "--exit"]
    )
    assert done.returncode == 0, done.stderr
    assert "diverges" not in done.stderr
    assert len(run_ids(data)) == 2  # the recovered history, and a new run served on it


def test_an_altered_fold_kills_the_dev_server_naming_the_run_and_the_event(
    served_once: Path, tmp_path: Path
) -> None:
    data = without_changelog(served_once, tmp_path)
    [run_id] = run_ids(data)
    done = aob_server(["dev", "--data-dir", str(data), "--port", "0"], altered=True)
    assert done.returncode == EXIT_HOST_DIED, done.stderr
    assert "a host died" in done.stderr
    assert "recovery stopped: the fold diverges from the log" in done.stderr
    assert f"run {run_id}: event " in done.stderr
    assert "NodeScheduled" in done.stderr
    assert "differs from what the log recorded in config" in done.stderr


async def test_an_altered_fold_turns_health_to_503(
    served_once: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = without_changelog(served_once, tmp_path)
    emit = fold_module._Step.emit

    def altered(step: fold_module._Step, payload: Payload) -> None:
        if isinstance(payload, NodeScheduled):
            payload = dataclasses.replace(payload, config={"changed": True})
        emit(step, payload)

    monkeypatch.setattr(fold_module._Step, "emit", altered)
    async with engine(data) as aob:
        await aob.engine.died.wait()
        response = await aob.client.get("/health")
        assert response.status_code == 503
        assert "RecoveryDiverged" in response.json()["dependencies"]["hosts"]


def test_audit_verify_reports_a_divergence_with_a_non_zero_exit(served_once: Path) -> None:
    [run_id] = run_ids(served_once)
    unaltered = aob_server(["audit", "verify", "--data-dir", str(served_once)])
    assert unaltered.returncode == 0, unaltered.stdout + unaltered.stderr
    assert "diverges" not in unaltered.stdout

    altered = aob_server(["audit", "verify", "--data-dir", str(served_once)], altered=True)
    assert altered.returncode == 1, altered.stdout + altered.stderr
    assert "identical to the live read models" in altered.stdout  # the tables still agree
    assert "the fold diverges from the log in 1 partition(s) of aob.runs" in altered.stdout
    assert f"run {run_id}: event " in altered.stdout
    assert "NodeScheduled" in altered.stdout
