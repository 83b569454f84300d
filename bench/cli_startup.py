"""How fast `aob` starts: `aob --version` and `aob run status RUN` against a bare Python.

    python -m bench.cli_startup [--reps N] [--json]

Each command is run REPS times, interleaved with the baseline `python -c pass` (same
interpreter), so machine noise hits all alike. Reported: the median wall time of each,
and the median of per-repetition ratios to the baseline run beside it. `run status`
includes its HTTP round trip to a dev server on loopback, so it is also set against
a bare Python making the same request with http.client. For scale, `import httpx`
(what the CLI avoids by using http.client) is measured the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.dev_server import dev_server


def aob_command() -> list[str]:
    script = Path(sys.executable).parent / "aob"  # the console script users run
    return [str(script)] if script.exists() else [sys.executable, "-m", "aob.cli.main"]


def wall(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True
    )
    return time.perf_counter() - start


def measure(
    commands: dict[str, list[str]], reps: int, env: dict[str, str]
) -> dict[str, dict[str, float]]:
    baseline = [sys.executable, "-c", "pass"]
    for command in [baseline, *commands.values()]:
        wall(command, env)  # warm the page cache and .pyc files
    times: dict[str, list[float]] = {"python -c pass": [], **{name: [] for name in commands}}
    ratios: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(reps):
        base = wall(baseline, env)
        times["python -c pass"].append(base)
        for name, command in commands.items():
            took = wall(command, env)
            times[name].append(took)
            ratios[name].append(took / base)
    result = {
        "python -c pass": {
            "median_ms": statistics.median(times["python -c pass"]) * 1000,
            "ratio": 1.0,
        }
    }
    for name in commands:
        result[name] = {
            "median_ms": statistics.median(times[name]) * 1000,
            "ratio": statistics.median(ratios[name]),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    aob = aob_command()
    with dev_server() as url:
        response = httpx.post(
            f"{url}/api/v1/runs",
            json={
                "definition": {"name": "w", "nodes": [{"id": "a", "type": "noop"}]},
                "inputs": {},
            },
        )
        run_id = response.json()["run_id"]
        host, port = url.removeprefix("http://").split(":")
        bare_request = (
            "import http.client, json; "
            f"c = http.client.HTTPConnection({host!r}, {port}); "
            f"c.request('GET', '/api/v1/runs/{run_id}'); json.loads(c.getresponse().read())"
        )
        env = {**os.environ, "AOB_SERVER": url}
        env.pop("AOB_CONFIG", None)
        result = measure(
            {
                "aob --version": [*aob, "--version"],
                "aob run status RUN": [*aob, "run", "status", run_id],
                "python: the same GET, bare": [sys.executable, "-c", bare_request],
                "python -c 'import httpx'": [sys.executable, "-c", "import httpx"],
            },
            args.reps,
            env,
        )
    if args.json:
        print(json.dumps({"reps": args.reps, "results": result}, indent=2))
        return 0
    print(
        f"CLI start-up, median of {args.reps} interleaved runs (ratio: per run, to python -c pass)"
    )
    for name, figures in result.items():
        print(f"  {name:<28} {figures['median_ms']:7.1f} ms   x{figures['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
