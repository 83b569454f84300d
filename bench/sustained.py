"""Sustained load: whether the embedded engine keeps its speed as its files grow.

    python -m bench.sustained [--windows 10] [--window-runs 500] [--concurrency 100]
                              [--synchronous NORMAL|FULL] [--json]

One engine as `aob server dev` assembles it (`bench.core`'s, the same 5-node DAG by
tag) on one data dir runs `--windows` closed-loop windows of `--window-runs` runs each,
back to back, so that each window starts where the last left the log and the read
models. Per window: workflows/s, this process's CPU ms per run, the bytes it wrote per
run (`wchar` of /proc/self/io: every write to the SQLite files and their write-ahead
logs, checkpoints included) and the size of the data dir. The baseline is the engine's
own first windows: the report ends with the medians of the last third of the windows
over those of the first third.

An engine whose indexes take each new id at a random page writes more per run as they
grow (every commit writes the pages it touched, and a checkpoint writes them again),
so its throughput falls run after run; one whose ids are time-ordered appends at the
right edge of every index and holds its figures (docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from aob.platform.serve import tune_garbage_collection
from bench import positive_int
from bench.core import closed_loop, open_aob

PROC_IO = Path("/proc/self/io")


@dataclass(frozen=True)
class Window:
    runs_so_far: int
    workflows_per_s: float
    cpu_ms_per_run: float
    kb_written_per_run: float | None  # None where /proc/self/io is not readable
    data_mb: float


def written_bytes() -> int | None:
    """Bytes this process has handed to write calls so far (Linux), else None."""
    try:
        fields = dict(line.split(": ") for line in PROC_IO.read_text().splitlines() if line)
    except OSError:
        return None
    return int(fields["wchar"])


def size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 2**20


async def sustain(
    windows: int, window_runs: int, concurrency: int, synchronous: str
) -> list[Window]:
    measured: list[Window] = []
    with tempfile.TemporaryDirectory(prefix="aob-bench-sustained-") as tmp:
        data = Path(tmp)
        async with open_aob(data, synchronous=synchronous) as runner:
            await closed_loop(runner, min(window_runs, 100), min(concurrency, 100))  # warm-up
            done = 0
            for _ in range(windows):
                written = written_bytes()
                cpu = time.process_time()
                sample = await closed_loop(runner, window_runs, concurrency)
                cpu_s = time.process_time() - cpu
                after = written_bytes()
                done += window_runs
                kb = None if written is None or after is None else (after - written) / 1024
                measured.append(
                    Window(
                        runs_so_far=done,
                        workflows_per_s=sample.workflows_per_s,
                        cpu_ms_per_run=cpu_s * 1000 / window_runs,
                        kb_written_per_run=None if kb is None else kb / window_runs,
                        data_mb=size_mb(data),
                    )
                )
                print(f"[sustained] window {len(measured)}/{windows}", file=sys.stderr)
    return measured


def last_over_first(windows: list[Window]) -> dict[str, float | None]:
    """The last third of the windows over the first third (medians: one window on a
    shared machine is noisy), per figure."""
    third = max(1, len(windows) // 3)
    first, last = windows[:third], windows[-third:]

    def ratio(figure: str) -> float | None:
        values = [[getattr(w, figure) for w in part] for part in (first, last)]
        if any(v is None for part in values for v in part):
            return None
        before, after = (statistics.median(part) for part in values)
        return float(after / max(before, 1e-9))

    return {
        name: ratio(name) for name in ("workflows_per_s", "cpu_ms_per_run", "kb_written_per_run")
    }


def render(windows: list[Window], args: argparse.Namespace) -> str:
    lines = [
        f"sustained: the embedded engine, {len(windows)} windows of {args.window_runs} runs "
        f"@ {args.concurrency} back to back on one data dir (bench.core's 5-node DAG); "
        f"SQLite synchronous={args.synchronous}",
        f"{'window':>6} {'runs':>7} {'wf/s':>6} {'CPU ms/run':>10} {'KB written/run':>14} "
        f"{'data MB':>8}",
    ]
    for number, w in enumerate(windows, 1):
        written = "n/a" if w.kb_written_per_run is None else f"{w.kb_written_per_run:.0f}"
        lines.append(
            f"{number:>6} {w.runs_so_far:>7} {w.workflows_per_s:>6.0f} "
            f"{w.cpu_ms_per_run:>10.2f} {written:>14} {w.data_mb:>8.1f}"
        )
    ratios = {name: _times(value) for name, value in last_over_first(windows).items()}
    lines.append(
        f"last third of the windows / first third (medians): wf/s {ratios['workflows_per_s']}, "
        f"CPU per run {ratios['cpu_ms_per_run']}, written per run {ratios['kb_written_per_run']}"
    )
    return "\n".join(lines)


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--windows", type=positive_int, default=10)
    parser.add_argument("--window-runs", type=positive_int, default=500)
    parser.add_argument("--concurrency", type=positive_int, default=100)
    parser.add_argument("--synchronous", choices=["NORMAL", "FULL"], default="NORMAL")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tune_garbage_collection()  # as `aob server` does
    windows = asyncio.run(
        sustain(args.windows, args.window_runs, args.concurrency, args.synchronous)
    )
    if args.json:
        report = {
            "windows": [asdict(w) for w in windows],
            "last_over_first": last_over_first(windows),
        }
        print(json.dumps(report, indent=2))
    else:
        print(render(windows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
