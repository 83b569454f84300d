"""Smoke tests: the fanout benchmarks run end to end against a real dev server in a
tiny configuration and report figures that hang together (untimed)."""

from __future__ import annotations

import json

import pytest

from bench import fanout, sse_connections


def test_fanout_benchmark_delivers_every_event_to_every_subscriber(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--subscribers", "1", "3", "--iterations", "3", "--reps", "1", "--json"]
    assert fanout.main(argv) == 0

    report = json.loads(capsys.readouterr().out)
    one, three = report["results"]
    paced_one, paced_three = report["paced"]
    assert (one["subscribers"], three["subscribers"]) == (1, 3)
    assert (paced_one["subscribers"], paced_three["subscribers"]) == (1, 3)
    # Every subscriber got the same events (the benchmark checks), at least the loop's;
    # the paced run's ticks each add an http node's.
    assert one["events"] == three["events"] >= 3 * 3
    assert paced_one["events"] == paced_three["events"] >= one["events"] + 3 * 3
    for result in (one, three, paced_one, paced_three):
        assert 0 <= result["latency_p50_ms"] <= result["latency_p99_ms"]
        assert result["events_per_write"] >= 1
        assert result["server_cpu_s"] >= 0


def test_connections_benchmark_holds_streams_and_ends_them_all(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--connections", "30", "--runs", "3", "--steps", "10", "--json"]
    assert sse_connections.main(argv) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["runs"] == 3
    assert [step["connections"] for step in report["steps"]] == [10, 30]
    assert report["ended"] == 30  # every stream got its run's `end`
    assert all(step["rss_mb"] > 0 for step in report["steps"])


def test_connections_benchmark_refuses_zero_streams(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sse_connections.parse_args(["--connections", "0"])
    assert exit_info.value.code == 2
    assert "--connections and --runs must be at least 1" in capsys.readouterr().err
