"""Following a run while its server goes away and comes back: nothing lost, nothing twice."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import time
from pathlib import Path
from typing import Any

from tests.cli.conftest import Cli
from tests.fanout.live import EXTERNAL_TYPE, LiveServer

# Events keep coming for ~4 s (30 timed-out attempts), then the run fails.
LONG = {
    "name": "long",
    "nodes": [
        {
            "id": "wait",
            "type": EXTERNAL_TYPE,
            "timeout_ms": 100,
            "retry": {"max_attempts": 30, "initial_backoff_ms": 30, "multiplier": 1},
        }
    ],
}


def read_json_lines(fd: int, count: int, timeout: float) -> tuple[list[dict[str, Any]], bytes]:
    """At least `count` lines from a pipe, raw (no buffered reader to hide data from
    select); returns them and any partial line read after them."""
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    complete, _, rest = data.rpartition(b"\n")
    return [json.loads(line) for line in complete.splitlines()], rest


def test_logs_stream_survives_a_server_restart(own_server: LiveServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    aob = Cli(home, own_server.url)
    run_id = own_server.submit(LONG)
    follower = aob.popen("logs", "stream", run_id, "--output", "json")
    assert follower.stdout is not None
    assert follower.stderr is not None
    before, partial = read_json_lines(follower.stdout.fileno(), 6, timeout=10)
    assert len(before) >= 6

    own_server.restart(signal.SIGKILL)  # same port, same data; the run carries on

    out, err = follower.communicate(timeout=60)
    after = [json.loads(line) for line in (partial.decode() + out).splitlines()]
    assert follower.returncode == 1  # the run failed, as designed
    assert "stream interrupted" in err
    assert "resuming" in err
    events = [m for m in before + after if m["event"] != "end"]
    ids = [m["id"] for m in events]
    assert ids == [e["offset"] for e in own_server.events(run_id)]  # no gap, no duplicate
    assert after[-1] == {
        "event": "end",
        "run_id": run_id,
        "status": "failed",
        "last_event_id": ids[-1],
    }
    attempts = [m["data"]["attempt"] for m in events if m["event"] == "node_scheduled"]
    assert attempts == list(range(1, 31))


def test_logs_stream_from_a_silent_server_says_how_long_it_waited(tmp_path: Path) -> None:
    """The stream waits for heartbeats, not --timeout: the message says the real wait."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are queued, never accepted, never answered
    try:
        home = tmp_path / "home"
        home.mkdir()
        aob = Cli(home, f"http://127.0.0.1:{silent.getsockname()[1]}")
        began = time.monotonic()
        result = aob("logs", "stream", "run_x", "--timeout", "2")
        took = time.monotonic() - began
    finally:
        silent.close()
    assert result.code == 4, result.err
    said = re.search(r"no answer within (\d+(?:\.\d+)?) s", result.err)
    assert said, result.err
    assert abs(float(said.group(1)) - took) < 4, (result.err, took)
