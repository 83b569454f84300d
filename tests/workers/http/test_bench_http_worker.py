"""The HTTP worker benchmark's code runs and its figures hang together (tiny, untimed)."""

from __future__ import annotations

from bench import http_worker

TINY = http_worker.Sizes(requests=20, concurrency=2, reps=1, guard_calls=10)


async def test_the_benchmark_measures_every_variant():
    with http_worker._ServerProcess() as port:
        figures = await http_worker._measure(port, TINY)
    assert figures.requests == 20
    for rate in (figures.httpx_per_s, figures.worker_ip_per_s, figures.worker_name_per_s):
        assert rate > 0
    assert figures.worker_ip_ratio > 0
    assert figures.overhead_ip_ratio > 0
    assert figures.guard_ip_us > 0
    assert "tasks/s" in http_worker._table(figures)
