"""Smoke tests: the core benchmark's code runs and its figures hang together (tiny, untimed)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from aob.events.types import NodeCompleted, NodeStarted, RunSubmitted
from bench import core

TINY = core.Sizes(
    fold_runs=3,
    fold_reps=1,
    sequential_runs=2,
    concurrent_runs=4,
    concurrency=2,
    reps=1,
    warmup_runs=1,
)


def test_simulated_stream_holds_what_the_coordinator_folds():
    stream = core.simulate_runs(4, in_flight=2)

    kinds = Counter(type(event.payload) for event in stream)
    assert kinds == {RunSubmitted: 4, NodeStarted: 4 * 5, NodeCompleted: 4 * 5}
    assert core.fold_all(stream) == 4
    # Two runs in flight: the second starts before the first ends.
    keys = [e.key for e in stream]
    last_of_first = len(keys) - 1 - keys[::-1].index(keys[0])
    assert keys.index("run_00000001") < last_of_first


def test_simulated_runs_compute_the_dag():
    stream = core.simulate_runs(3)

    outputs = {
        (e.key, e.payload.node_id): e.payload.output
        for e in stream
        if isinstance(e.payload, NodeCompleted)
    }
    assert {key: out for (key, node), out in outputs.items() if node == "e"} == {
        f"run_{x:08d}": (x + 1) * 9 for x in range(3)
    }


def test_fold_benchmark_reports_every_variant():
    result = core.bench_fold(runs=3, reps=2)

    assert result.events == 3 * 11
    assert set(result.events_per_s) == {
        "dict-update fold (baseline)",
        "decode only (baseline)",
        "fold",
        "decode + fold",
    }
    assert all(rate > 0 for rate in result.events_per_s.values())
    assert result.fold_vs_dict_update > 0


def test_percentile_is_nearest_rank():
    samples = [float(x) for x in range(1, 101)]
    assert core.percentile(samples, 0.5) == 50.0
    assert core.percentile(samples, 0.99) == 99.0
    assert core.percentile([7.0], 0.99) == 7.0


async def test_end_to_end_benchmark_runs_the_dag_on_the_embedded_engine():
    result = await core.bench_e2e(TINY, synchronous="NORMAL", with_langgraph=False)

    assert result.engines == ["aob"]
    assert result.ratios == {}
    for load, concurrency in ((result.low_load["aob"], 1), (result.concurrent["aob"], 2)):
        assert load.concurrency == concurrency
        assert load.workflows_per_s > 0
        assert 0 < load.p50_ms <= load.p99_ms
        assert load.cpu_ms_per_workflow > 0
    table = core.render(core.environment(), None, result)
    assert "concurrent (4 runs @ 2)" in table


async def test_end_to_end_benchmark_pairs_aob_with_langgraph():
    pytest.importorskip("langgraph.checkpoint.sqlite.aio")

    result = await core.bench_e2e(TINY, synchronous="NORMAL", with_langgraph=True)

    assert result.engines == ["aob", "langgraph"]
    assert set(result.ratios) == {
        "low_load_workflows_per_s",
        "low_load_p50",
        "concurrent_workflows_per_s",
        "concurrent_p50",
        "low_load_cpu_per_workflow",
        "concurrent_cpu_per_workflow",
    }
    assert all(ratio > 0 for ratio in result.ratios.values())


async def test_end_to_end_benchmark_pairs_aob_with_dbos():
    pytest.importorskip("dbos")

    result = await core.bench_e2e(TINY, synchronous="NORMAL", with_langgraph=False, with_dbos=True)

    assert result.engines == ["aob", "dbos"]
    assert result.ratios == {}
    assert set(result.dbos_ratios) == {
        "low_load_workflows_per_s",
        "low_load_p50",
        "concurrent_workflows_per_s",
        "concurrent_p50",
        "low_load_cpu_per_workflow",
        "concurrent_cpu_per_workflow",
    }
    assert all(ratio > 0 for ratio in result.dbos_ratios.values())
    assert result.concurrent["dbos"].workflows_per_s > 0
    table = core.render(core.environment(), None, result)
    assert "aob / DBOS (per-rep ratios)" in table


def test_command_line_prints_json(capsys):
    assert core.main(["--only", "fold", "--json", "--quick", "--fold-runs", "4"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["fold"]["events"] == 4 * 11
    assert report["end_to_end"] is None


def test_command_line_refuses_a_zero_size(capsys):
    with pytest.raises(SystemExit) as exit_info:
        core.parse_args(["--fold-runs", "0"])
    assert exit_info.value.code == 2
    assert "--fold-runs must be at least 1" in capsys.readouterr().err
