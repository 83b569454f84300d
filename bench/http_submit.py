"""HTTP submit throughput: `POST /api/v1/runs` by tag on the real dev server, against a
bare FastAPI app parsing the same body, both driven by wrk with the same settings.

    python -m bench.http_submit [--duration 10] [--reps 3] [--connections 32]
                                [--synchronous NORMAL FULL] [--execute] [--auth off]
                                [--py-spy FILE] [--json]

Both servers run as separate processes on this machine: `python -m aob.platform dev`
(what `aob server dev` runs; token authentication on and its admin token sent, rate
limits off) and `python -m bench.bare_fastapi`. By default the dev server runs no
workers and decides nothing in process (`AOB_WORKERS=[]`,
`AOB_INLINE_SIMPLE_WORK=false`): submissions are recorded, the coordinator and
projector fold them, no node executes; `--execute` runs the nodes too (the 5-node
transform DAG of `bench.core`, whose steps the coordinator decides itself). Each
submit's answer (202) means its `RunSubmitted` is durable in the SQLite log under the
synchronous mode named (NORMAL, the default: survives a crash of the process; FULL:
also of the machine).

wrk (`apt-get install -y wrk`) drives each server in alternating repetitions after a
warm-up; the report gives per-repetition submits/s, p50/p99 latency, the ratio
aob/bare per repetition, and medians. `--py-spy FILE` records the dev server with
py-spy during aob's last repetition: a flame graph SVG, speedscope JSON when FILE ends
in .json, collapsed stacks (one per line, with a count) when it ends in .txt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import positive_int
from bench.core import FANOUT_JOIN
from bench.dev_server import DevServer, started_dev_server

TAG = "bench-http"
BODY = json.dumps({"tag": TAG, "inputs": {"x": 1}})

# wrk's Lua hooks: the POST, its headers, and a JSON summary line after the run.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(auth)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Rep:
    """One wrk run against one server."""

    requests: int
    errors: int  # non-2xx answers, socket errors and timeouts
    per_s: float  # answered 2xx per second
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float  # the server process's CPU time (user + system) per answer


@dataclass
class ModeResult:
    synchronous: str
    aob: list[Rep] = field(default_factory=list)
    bare: list[Rep] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [a.per_s / b.per_s for a, b in zip(self.aob, self.bare, strict=True)]

    @property
    def cpu_ratios(self) -> list[float]:
        """Server CPU per answer, bare/aob: the throughput ratio a CPU-bound server
        would reach on an otherwise idle machine."""
        return [
            b.cpu_ms_per_request / a.cpu_ms_per_request
            for a, b in zip(self.aob, self.bare, strict=True)
        ]

    def summary(self) -> dict[str, Any]:
        def med(reps: list[Rep], name: str) -> float:
            return float(statistics.median(getattr(r, name) for r in reps))

        return {
            "synchronous": self.synchronous,
            "aob_per_s": med(self.aob, "per_s"),
            "bare_per_s": med(self.bare, "per_s"),
            "ratio_median": statistics.median(self.ratios),
            "ratios": self.ratios,
            "aob_p50_ms": med(self.aob, "p50_ms"),
            "aob_p99_ms": med(self.aob, "p99_ms"),
            "bare_p50_ms": med(self.bare, "p50_ms"),
            "bare_p99_ms": med(self.bare, "p99_ms"),
            "aob_cpu_ms_per_request": med(self.aob, "cpu_ms_per_request"),
            "bare_cpu_ms_per_request": med(self.bare, "cpu_ms_per_request"),
            "cpu_ratio_median": statistics.median(self.cpu_ratios),
            "aob_errors": sum(r.errors for r in self.aob),
            "bare_errors": sum(r.errors for r in self.bare),
            "aob_reps": [asdict(r) for r in self.aob],
            "bare_reps": [asdict(r) for r in self.bare],
        }


def wrk_script(token: str | None) -> str:
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    return WRK_SCRIPT % {"body": json.dumps(BODY), "auth": auth}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, pid: int, script: Path, seconds: int, connections: int, threads: int) -> Rep:
    """wrk against `url` (served by process `pid`) for `seconds`."""
    command = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"{url}/api/v1/runs",
    ]
    cpu_before = cpu_seconds(pid)
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    cpu = cpu_seconds(pid) - cpu_before
    match = re.search(r"WRK_JSON (\{.*\})", done.stdout)
    if not match:
        raise RuntimeError(f"wrk printed no summary: {done.stdout}{done.stderr}")
    s = json.loads(match.group(1))
    errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    answered = s["requests"] - s["status"]
    return Rep(
        requests=s["requests"],
        errors=errors,
        per_s=answered / (s["duration_us"] / 1e6),
        p50_ms=s["p50_us"] / 1000,
        p99_ms=s["p99_us"] / 1000,
        cpu_ms_per_request=cpu * 1000 / max(answered, 1),
    )


@contextmanager
def bare_fastapi() -> Iterator[tuple[str, int]]:
    """The bare FastAPI app in its own process; yields its URL and process id."""
    command = [sys.executable, "-m", "bench.bare_fastapi", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if not match:
            raise RuntimeError(f"the bare FastAPI app did not start: {line!r}")
        yield match.group(1), process.pid
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stdout is not None:
            process.stdout.close()


def store_workflow(server: DevServer) -> None:
    """The DAG under TAG, and one submission by tag to check it is accepted."""
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30.0) as api:
        api.post(
            "/api/v1/workflows", json={"definition": FANOUT_JOIN, "tag": TAG}
        ).raise_for_status()
        answer = api.post(
            "/api/v1/runs", content=BODY, headers={"Content-Type": "application/json"}
        )
        if answer.status_code != 202:
            raise RuntimeError(
                f"a submission by tag was refused: {answer.status_code} {answer.text}"
            )


@contextmanager
def py_spy(pid: int, output: Path | None) -> Iterator[None]:
    """py-spy recording `pid` while inside, when `output` is given."""
    if output is None:
        yield
        return
    fmt = {".json": "speedscope", ".txt": "raw"}.get(output.suffix, "flamegraph")
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "400",
            "--format",
            fmt,
            "--output",
            str(output),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield
    finally:
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        _, err = spy.communicate(timeout=60)
        if spy.returncode not in (0, None) and not output.exists():
            print(f"py-spy failed: {err.strip()}", file=sys.stderr)


def measure_mode(args: argparse.Namespace, synchronous: str) -> ModeResult:
    env = {"AOB_LOG_SYNCHRONOUS": synchronous}
    if not args.execute:  # nothing executes: no worker, and no simple step in process
        env.update(AOB_WORKERS="[]", AOB_INLINE_SIMPLE_WORK="false")
    result = ModeResult(synchronous)
    with (
        started_dev_server(env, auth=args.auth == "tokens") as server,
        bare_fastapi() as (bare_url, bare_pid),
        tempfile.TemporaryDirectory(prefix="aob-wrk-") as scratch,
    ):
        store_workflow(server)
        aob_script = Path(scratch) / "aob.lua"
        aob_script.write_text(wrk_script(server.token))
        bare_script = Path(scratch) / "bare.lua"
        bare_script.write_text(wrk_script(None))
        drive = {
            "aob": (server.url, server.pid, aob_script),
            "bare": (bare_url, bare_pid, bare_script),
        }
        for target in drive.values():  # warm-up, not reported
            run_wrk(*target, args.warmup, args.connections, args.threads)
        for rep in range(args.reps):
            _progress(f"{synchronous}: repetition {rep + 1}/{args.reps}")
            last = rep == args.reps - 1
            with py_spy(server.pid, args.py_spy if last else None):
                result.aob.append(_wrk(drive["aob"], args.duration, args))
            result.bare.append(_wrk(drive["bare"], args.duration, args))
    return result


def _wrk(target: tuple[str, int, Path], seconds: int, args: argparse.Namespace) -> Rep:
    return run_wrk(*target, seconds, args.connections, args.threads)


def render(results: Sequence[ModeResult], args: argparse.Namespace) -> str:
    execution = (
        "nodes executing" if args.execute else "node execution off (no workers, no inline work)"
    )
    lines = [
        f"POST /api/v1/runs by tag: wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration}s, {args.reps} alternating repetitions; auth {args.auth}, "
        f"rate limits off, {execution}; cpus {os.cpu_count()}",
    ]
    for result in results:
        s = result.summary()
        lines.append(f"\nSQLite synchronous={result.synchronous} (a 202 = RunSubmitted durable)")
        lines.append(
            "  rep   aob/s  p50 ms  p99 ms cpu ms    bare/s  p50 ms  p99 ms cpu ms  aob/bare (cpu)"
        )
        for i, (a, b) in enumerate(zip(result.aob, result.bare, strict=True)):
            lines.append(
                f"  {i + 1:>3} {a.per_s:>7.0f} {a.p50_ms:>7.1f} {a.p99_ms:>7.1f}"
                f" {a.cpu_ms_per_request:>6.2f}   {b.per_s:>7.0f} {b.p50_ms:>7.1f}"
                f" {b.p99_ms:>7.1f} {b.cpu_ms_per_request:>6.2f}"
                f"  {a.per_s / b.per_s:>6.2f}x ({result.cpu_ratios[i]:.2f}x)"
            )
        lines.append(
            f"  median: aob {s['aob_per_s']:.0f}/s (p50 {s['aob_p50_ms']:.1f} ms, p99 "
            f"{s['aob_p99_ms']:.1f} ms), bare {s['bare_per_s']:.0f}/s, aob/bare "
            f"{s['ratio_median']:.2f}x (aim >= 0.5x, p50 <= 20 ms); server CPU per "
            f"answer aob {s['aob_cpu_ms_per_request']:.2f} ms, bare "
            f"{s['bare_cpu_ms_per_request']:.2f} ms ({s['cpu_ratio_median']:.2f}x); errors aob "
            f"{s['aob_errors']}, bare {s['bare_errors']}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_submit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=positive_int, default=10, help="seconds per wrk run")
    parser.add_argument(
        "--warmup", type=positive_int, default=3, help="seconds of warm-up per server"
    )
    parser.add_argument("--reps", type=positive_int, default=3, help="alternating repetitions")
    parser.add_argument("--connections", type=positive_int, default=32)
    parser.add_argument("--threads", type=positive_int, default=2, help="wrk threads")
    parser.add_argument(
        "--synchronous",
        nargs="+",
        default=["NORMAL", "FULL"],
        choices=["NORMAL", "FULL"],
        help="SQLite synchronous modes to measure (default: both)",
    )
    parser.add_argument("--execute", action="store_true", help="run the nodes too")
    parser.add_argument("--auth", choices=["tokens", "off"], default="tokens")
    parser.add_argument("--py-spy", type=Path, help="record the dev server during aob's last rep")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.http_submit needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    results = [measure_mode(args, mode) for mode in args.synchronous]
    if args.json:
        print(json.dumps([r.summary() for r in results], indent=2))
    else:
        print(render(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
