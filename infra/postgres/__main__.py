"""`python -m aob.infra.postgres start|stop`: a throwaway PostgreSQL for scripts.

    dir=$(mktemp -d)
    export AOB_DATABASE_URL=$(python -m aob.infra.postgres start --dir "$dir" --no-fsync)
    ...
    python -m aob.infra.postgres stop --dir "$dir"

`start` prints the DSN alone on stdout, so it can be captured as above; everything
else goes to stderr. Without `--dir` it makes a temporary directory and says which.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from aob.infra.postgres import PostgresError, PostgresServer


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "start":
            began = time.monotonic()
            server = PostgresServer.start(args.dir, fsync=not args.no_fsync, port=args.port)
            elapsed = time.monotonic() - began
            print(
                f"postgres ready on port {server.port} in {elapsed:.2f}s; stop with: "
                f"python -m aob.infra.postgres stop --dir {server.directory}",
                file=sys.stderr,
            )
            print(server.dsn)
        else:
            PostgresServer.attach(args.dir).stop(remove=not args.keep)
    except PostgresError as e:
        print(f"aob.infra.postgres: {e}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aob.infra.postgres", description="A throwaway PostgreSQL server."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="initialise and start a server; print its DSN")
    start.add_argument("--dir", help="a new or empty directory (default: a temporary one)")
    start.add_argument("--port", type=int, help="loopback port (default: a free one)")
    start.add_argument(
        "--no-fsync",
        action="store_true",
        help="fsync=off: faster, loses data on a crash; for throwaway test servers only",
    )
    stop = commands.add_parser("stop", help="stop the server started in --dir")
    stop.add_argument("--dir", required=True, help="the directory given to (or made by) start")
    stop.add_argument("--keep", action="store_true", help="keep the directory (data, log)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
