"""`python -m aob.platform <service>`: the server commands (`aob server ...` execs this)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from aob.platform.demo import DemoRun
from aob.platform.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aob server", description="Run aob's services.")
    sub = parser.add_subparsers(dest="service", required=True)
    dev = sub.add_parser(
        "dev",
        help="everything in one process on the embedded log (no Kafka, no Postgres)",
        description="API, coordinator, projector, timers and built-in workers in one process, "
        "on the embedded log and SQLite read models.",
    )
    dev.add_argument(
        "--data-dir", type=Path, help="log and read models (AOB_DATA_DIR, default .aob)"
    )
    dev.add_argument("--host", help="listen address (AOB_HOST, default 127.0.0.1)")
    dev.add_argument("--port", type=int, help="listen port, 0 for any free one (AOB_PORT, 8080)")
    dev.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    dev.add_argument(
        "--run",
        type=Path,
        metavar="FILE",
        help="once listening, run this workflow, showing progress",
    )
    dev.add_argument(
        "--inputs",
        type=Path,
        metavar="JSON",
        help="JSON inputs for --run (default: FILE.inputs.json)",
    )
    dev.add_argument(
        "--exit", action="store_true", help="with --run: stop the server when the run ends"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"data_dir": args.data_dir, "host": args.host, "port": args.port}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    demo = DemoRun.from_files(args.run, args.inputs) if args.run else None
    if isinstance(demo, str):
        print(f"aob server: {demo}", file=sys.stderr)
        return 2
    from aob.platform.serve import serve_dev  # after argument checks: loads the whole server

    try:
        return asyncio.run(serve_dev(settings, args.log_level, demo, exit_after=args.exit))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return 141


if __name__ == "__main__":
    sys.exit(main())
