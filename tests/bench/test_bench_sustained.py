"""Smoke test: the sustained-load benchmark runs windows back to back on one engine and
reports figures that hang together (tiny, untimed)."""

from __future__ import annotations

import json

import pytest

from bench import sustained


def test_windows_follow_each_other_on_one_data_dir(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--windows", "3", "--window-runs", "8", "--concurrency", "4", "--json"]
    assert sustained.main(argv) == 0

    report = json.loads(capsys.readouterr().out)
    windows = report["windows"]
    assert [w["runs_so_far"] for w in windows] == [8, 16, 24]
    for window in windows:
        assert window["workflows_per_s"] > 0
        assert window["cpu_ms_per_run"] > 0
        assert window["kb_written_per_run"] > 0  # every run's events reach the files
    # One data dir throughout: it only grows.
    sizes = [w["data_mb"] for w in windows]
    assert sizes == sorted(sizes)
    assert sizes[0] > 0
    assert set(report["last_over_first"]) == {
        "workflows_per_s",
        "cpu_ms_per_run",
        "kb_written_per_run",
    }


def test_a_window_needs_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sustained.parse_args(["--window-runs", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
