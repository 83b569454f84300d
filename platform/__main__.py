"""`python -m aob.platform <service>`: the server commands (`aob server ...` execs this)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pydantic
from pydantic_settings import SettingsError

from aob.platform.demo import DemoRun
from aob.platform.settings import Settings, service_problem
from aob.workers.http.settings import HttpWorkerSettings
from aob.workers.sandbox.settings import SandboxSettings

# Each service's port when neither --port nor AOB_PORT says otherwise, so that a whole
# cluster can run on one machine without configuration.
DEFAULT_PORTS = {
    "dev": 8080,
    "api": 8080,
    "coordinator": 8081,
    "projector": 8082,
    "workers": 8083,
    "fanout": 8084,
}
SERVICES = {
    "api": "the HTTP API (runs, workflows, approvals, patches, tools) and its streams",
    "coordinator": "the coordinator fold over aob.runs, and the timer service "
    "(the consumer group aob-coordinator: run as many as needed, each takes a share "
    "of the partitions)",
    "projector": "feeds the read models from the log (the consumer group aob-projector: "
    "run as many as needed, each takes a share of the partitions)",
    "workers": "built-in, http, hitl and agent workers (AOB_WORKERS picks among them)",
    "fanout": "the run streams only (SSE and WebSocket)",
}
CLUSTER_NOTE = (
    "Services other than dev share a Kafka cluster and a PostgreSQL database: set "
    "AOB_KAFKA_BOOTSTRAP and AOB_DATABASE_URL. Each serves /health and /metrics."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aob server", description="Run aob's services.", epilog=CLUSTER_NOTE
    )
    sub = parser.add_subparsers(dest="service", required=True)
    dev = sub.add_parser(
        "dev",
        help="everything in one process on the embedded log (no Kafka, no Postgres)",
        description="API, coordinator, projector, timers and workers in one process, "
        "on the embedded log and SQLite read models (or the cluster's, when configured).",
    )
    _listen_arguments(dev, "dev")
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
        help="a file of JSON inputs for --run (default: the --run file's name up to its "
        "first dot, plus .inputs.json, when it exists)",
    )
    dev.add_argument(
        "--exit", action="store_true", help="with --run: stop the server when the run ends"
    )
    for name, what in SERVICES.items():
        service = sub.add_parser(name, help=what, description=f"{what}. {CLUSTER_NOTE}")
        _listen_arguments(service, name)
    _audit_parser(sub)
    return parser


def _listen_arguments(parser: argparse.ArgumentParser, service: str) -> None:
    parser.add_argument(
        "--data-dir", type=Path, help="embedded log, read models, blobs (AOB_DATA_DIR, .aob)"
    )
    parser.add_argument("--host", help="listen address (AOB_HOST, default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        help=f"listen port, 0 for any free one (AOB_PORT, default {DEFAULT_PORTS[service]})",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )


def _audit_parser(sub: Any) -> None:
    audit = sub.add_parser(
        "audit",
        help="replay for audit: a run's history from the log; rebuild and compare read models",
        description="Reads the log the settings name (stop `aob server dev` first: the "
        "embedded log has one owner).",
    )
    actions = audit.add_subparsers(dest="action", required=True)
    history = actions.add_parser("history", help="a run's every event, read from the log")
    history.add_argument("run_id", metavar="RUN")
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    verify = actions.add_parser(
        "verify",
        help="rebuild every read model from offset 0 into a fresh store and compare",
        description="Exit 0 when the rebuilt read models equal the live ones and the fold "
        "still emits what aob.runs recorded (re-folded up to the coordinator's offsets), "
        "1 otherwise.",
    )
    verify.add_argument(
        "--keep", action="store_true", help="keep the rebuilt store (Postgres schema)"
    )
    for parser in (history, verify):
        parser.add_argument("--data-dir", type=Path, help="embedded log (AOB_DATA_DIR, .aob)")


def _setting_problems(error: pydantic.ValidationError | SettingsError, prefix: str) -> list[str]:
    """One line per bad setting, naming its variable."""
    if isinstance(error, pydantic.ValidationError):
        problems = []
        for invalid in error.errors():
            where = f"{prefix}{str(invalid['loc'][0]).upper()}: " if invalid["loc"] else ""
            problems.append(where + invalid["msg"].removeprefix("Value error, "))
        return problems
    # pydantic-settings names the field in prose: 'error parsing value for field
    # "workers" from source "EnvSettingsSource"' (a list or object that is not JSON).
    found = re.search(r'field "([a-z0-9_]+)"', str(error))
    if found is None:
        return [str(error)]
    variable = f"{prefix}{found.group(1).upper()}"
    return [f"{variable}: not valid JSON (lists and objects take JSON; docs/reference/settings.md)"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefix = "AOB_"
    try:
        settings = _settings(args)
        # The workers' settings are read when a service builds them; checked here too,
        # so that a bad value stops every service alike, as one line naming it.
        prefix = "AOB_HTTP_"
        HttpWorkerSettings()
        prefix = "AOB_JQ_"
        SandboxSettings()
    except (pydantic.ValidationError, SettingsError) as error:  # no traceback
        for line in _setting_problems(error, prefix):
            print(f"aob server: invalid setting: {line}", file=sys.stderr)
        return 2
    level = getattr(args, "log_level", "warning")
    if settings.log_format == "json":  # one JSON object per line, with trace ids
        from aob.platform.observability import configure_logging

        configure_logging(level)
    else:
        logging.basicConfig(
            level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    try:
        if args.service == "audit":
            from aob.platform.serve import run_audit

            return asyncio.run(run_audit(settings, args))
        problem = service_problem(settings, args.service)
        if problem is not None:
            print(f"aob server {args.service}: {problem}", file=sys.stderr)
            return 2
        if args.service == "dev":
            return _serve_dev(settings, args)
        from aob.platform.serve import serve_service  # loads the whole server

        return asyncio.run(serve_service(settings, args.service, args.log_level))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return 141


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "data_dir": args.data_dir,
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if "port" not in settings.model_fields_set and args.service in DEFAULT_PORTS:
        settings = settings.model_copy(update={"port": DEFAULT_PORTS[args.service]})
    return settings


def _serve_dev(settings: Settings, args: argparse.Namespace) -> int:
    demo = DemoRun.from_files(args.run, args.inputs) if args.run else None
    if isinstance(demo, str):
        print(f"aob server: {demo}", file=sys.stderr)
        return 2
    from aob.platform.serve import serve_dev  # after argument checks: loads the whole server

    return asyncio.run(serve_dev(settings, args.log_level, demo, exit_after=args.exit))


if __name__ == "__main__":
    sys.exit(main())
