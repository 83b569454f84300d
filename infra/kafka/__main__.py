"""`python -m aob.infra.kafka start|stop|status|fetch`: a local Kafka broker for scripts.

    export AOB_KAFKA_BOOTSTRAP=$(python -m aob.infra.kafka start)
    ...
    python -m aob.infra.kafka stop

`start` and `status` print the bootstrap address alone on stdout, so it can be
captured as above; everything else goes to stderr. The broker lives in --dir
(default $AOB_KAFKA_HOME, else ~/.cache/aob/kafka/broker) and keeps its data there
between `stop` and the next `start`; `stop --remove` deletes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aob.infra.kafka import DEFAULT_HEAP, DEFAULT_VERSION, KafkaBroker, KafkaInfraError, fetch_jars

PROG = "python -m aob.infra.kafka"
DEFAULT_HOME = Path(os.environ.get("AOB_KAFKA_HOME", "~/.cache/aob/kafka/broker")).expanduser()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        match args.command:
            case "start":
                return _start(args)
            case "stop":
                return _stop(args)
            case "status":
                return _status(args)
            case _:
                print(fetch_jars(args.version))
                return 0
    except KafkaInfraError as e:
        print(f"aob.infra.kafka: {e}", file=sys.stderr)
        return 1


def _start(args: argparse.Namespace) -> int:
    began = time.monotonic()
    broker = KafkaBroker.start(
        args.dir, port=args.port, version=args.version, heap=args.heap, timeout=args.timeout
    )
    elapsed = time.monotonic() - began
    _say(
        f"kafka {broker.version} ready at {broker.bootstrap} after {elapsed:.1f}s "
        f"(pid {broker.pid}, log {broker.log_file}); stop with: {PROG} stop --dir {args.dir}"
    )
    print(broker.bootstrap)
    return 0


def _stop(args: argparse.Namespace) -> int:
    broker = KafkaBroker.attach(args.dir)
    was_running = broker.running()
    broker.stop(remove=args.remove, timeout=args.timeout)
    _say(f"kafka at {broker.bootstrap} " + ("stopped" if was_running else "was not running"))
    return 0


def _status(args: argparse.Namespace) -> int:
    broker = KafkaBroker.attach(args.dir)
    if not broker.running():
        _say(f"kafka in {broker.directory} is not running")
        return 1
    if not broker.ready():
        _say(f"kafka {broker.version} (pid {broker.pid}) runs but does not answer yet")
        return 1
    _say(f"kafka {broker.version} ready at {broker.bootstrap} (pid {broker.pid})")
    print(broker.bootstrap)
    return 0


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="A single-node Apache Kafka broker (KRaft) on loopback."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def with_dir(command: argparse.ArgumentParser) -> argparse.ArgumentParser:
        command.add_argument(
            "--dir", type=Path, default=DEFAULT_HOME, help=f"broker directory ({DEFAULT_HOME})"
        )
        return command

    start = with_dir(commands.add_parser("start", help="start (or restart) the broker"))
    start.add_argument("--port", type=int, help="loopback port (default: the last one, or free)")
    start.add_argument("--version", default=DEFAULT_VERSION, help="Kafka version (%(default)s)")
    start.add_argument("--heap", default=DEFAULT_HEAP, help="JVM -Xmx (%(default)s)")
    start.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for ready")

    stop = with_dir(commands.add_parser("stop", help="stop the broker"))
    stop.add_argument("--remove", action="store_true", help="also delete its directory")
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds before a kill")

    with_dir(commands.add_parser("status", help="exit 0 and print the address if it is ready"))

    fetch = commands.add_parser("fetch", help="fetch the broker's jars; print their directory")
    fetch.add_argument("--version", default=DEFAULT_VERSION, help="Kafka version (%(default)s)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
