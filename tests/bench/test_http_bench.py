"""Smoke tests: the HTTP benchmarks drive the real dev server (and the bare FastAPI
baseline) in a tiny configuration and report what they measured (untimed)."""

from __future__ import annotations

import json
import shutil

import pytest

from bench import http_e2e, http_submit


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install -y wrk)")
def test_http_submit_drives_aob_and_the_bare_app_with_wrk(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--duration", "1", "--warmup", "1", "--reps", "1", "--connections", "2"]
    assert http_submit.main([*argv, "--threads", "1", "--synchronous", "NORMAL", "--json"]) == 0

    [report] = json.loads(capsys.readouterr().out)
    assert report["synchronous"] == "NORMAL"
    assert report["aob_errors"] == 0  # every submission by tag was accepted (202)
    assert report["bare_errors"] == 0
    for side in ("aob", "bare"):
        [rep] = report[f"{side}_reps"]
        assert rep["requests"] > 0
        assert 0 < rep["p50_ms"] <= rep["p99_ms"]
        assert rep["cpu_ms_per_request"] > 0
    assert report["ratios"] == [report["aob_per_s"] / report["bare_per_s"]]


def test_http_submit_table_names_durability_and_the_ratio() -> None:
    rep = http_submit.Rep(
        requests=10, errors=0, per_s=5.0, p50_ms=1.0, p99_ms=2.0, cpu_ms_per_request=0.5
    )
    bare = http_submit.Rep(
        requests=20, errors=0, per_s=10.0, p50_ms=1.0, p99_ms=2.0, cpu_ms_per_request=0.25
    )
    result = http_submit.ModeResult("FULL", [rep], [bare])
    table = http_submit.render([result], http_submit.parse_args([]))
    assert "SQLite synchronous=FULL" in table
    assert "0.50x (0.50x)" in table


def test_http_e2e_submits_over_http_and_sees_every_run_complete(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--runs", "6", "--concurrency", "3", "--reps", "1", "--warmup", "2", "--json"]
    assert http_e2e.main(argv) == 0

    [report] = json.loads(capsys.readouterr().out)
    [rep] = report["reps"]
    assert rep["runs"] == 6
    assert rep["concurrency"] == 3
    assert report["failed"] == 0  # all six completed, each observed
    assert rep["workflows_per_s"] > 0
    assert 0 < rep["p50_ms"] <= rep["p99_ms"]
    assert rep["server_cpu_ms_per_workflow"] > 0
