"""`python -m aob.platform dev`: the server commands (the `aob server ...` CLI execs this)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from aob.platform.api.app import create_app
from aob.platform.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aob server", description="Run aob's services.")
    sub = parser.add_subparsers(dest="service", required=True)
    dev = sub.add_parser(
        "dev",
        help="API, coordinator, projector, timers and built-in workers "
        "in one process, on the embedded log (no Kafka, no Postgres)",
    )
    dev.add_argument(
        "--data-dir",
        type=Path,
        help="where the log and read models live (AOB_DATA_DIR, default .aob)",
    )
    dev.add_argument("--host", help="listen address (AOB_HOST, default 127.0.0.1)")
    dev.add_argument("--port", type=int, help="listen port (AOB_PORT, default 8080)")
    dev.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(argv)

    overrides = {
        k: v
        for k, v in {"data_dir": args.data_dir, "host": args.host, "port": args.port}.items()
        if v is not None
    }
    settings = Settings(**overrides)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(
        f"aob dev server: http://{settings.host}:{settings.port}  (data in {settings.data_dir.resolve()})",
        flush=True,
    )
    print(f"  API docs: http://{settings.host}:{settings.port}/docs", flush=True)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
