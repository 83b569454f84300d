"""The `aob` command line. It talks to the API over HTTP only and imports no server code.

Exit codes: 0 success; 1 a followed run failed or was cancelled; 2 bad usage or
input; 3 the API refused the request; 4 the server could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aob

EXIT_RUN_FAILED, EXIT_USAGE, EXIT_API, EXIT_UNREACHABLE = 1, 2, 3, 4
TERMINAL = {"completed", "failed", "cancelled"}


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "server":
        return exec_server(args.server_args)
    try:
        result: int = args.handler(args)
        return result
    except CliError as error:
        print(f"aob: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aob", description="Run and watch aob workflows.")
    parser.add_argument("--version", action="version", version=f"aob {aob.__version__}")
    parser.add_argument("--server", default=os.environ.get("AOB_SERVER", "http://127.0.0.1:8080"),
                        help="API address (env AOB_SERVER, default http://127.0.0.1:8080)")
    parser.add_argument("--output", choices=["text", "json"], default="text", help="output format")
    sub = parser.add_subparsers(dest="command", required=True)

    server = sub.add_parser("server", help="run aob's services (try: aob server dev)", add_help=False)
    server.add_argument("server_args", nargs=argparse.REMAINDER)

    run = sub.add_parser("run", help="start and inspect runs").add_subparsers(dest="action", required=True)
    start = run.add_parser("start", help="start a run of a workflow file (JSON or YAML) or tag")
    start.add_argument("workflow", help="a workflow file, or a tag with --tag")
    start.add_argument("--tag", action="store_true", help="WORKFLOW names a stored tag, not a file")
    start.add_argument("--input", action="append", default=[], metavar="KEY=VALUE",
                       help="a run input (VALUE parsed as JSON when it is JSON); repeatable")
    start.add_argument("--inputs-file", type=Path, help="a JSON file with the run inputs")
    start.add_argument("-f", "--follow", action="store_true", help="follow the run until it ends")
    start.set_defaults(handler=cmd_run_start)
    status = run.add_parser("status", help="a run's status and node states")
    status.add_argument("run_id")
    status.set_defaults(handler=cmd_run_status)
    listing = run.add_parser("list", help="recent runs")
    listing.add_argument("--status", choices=sorted(TERMINAL | {"running", "waiting"}))
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(handler=cmd_run_list)
    cancel = run.add_parser("cancel", help="cancel a run")
    cancel.add_argument("run_id")
    cancel.add_argument("--reason", default="")
    cancel.set_defaults(handler=cmd_run_cancel)

    wf = sub.add_parser("workflow", help="manage workflows").add_subparsers(dest="action", required=True)
    validate = wf.add_parser("validate", help="validate a workflow file")
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=cmd_workflow_validate)
    create = wf.add_parser("create", help="store a workflow file as a new version")
    create.add_argument("file", type=Path)
    create.add_argument("--tag", help="tag to move to it (default: the workflow's name)")
    create.set_defaults(handler=cmd_workflow_create)
    return parser


def exec_server(server_args: list[str]) -> int:
    """Replace this process with the server, so the CLI itself never imports it."""
    argv = [sys.executable, "-m", "aob.platform", *server_args]
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover - execv does not return


# --- commands ----------------------------------------------------------------------


def cmd_run_start(args: argparse.Namespace) -> int:
    inputs = parse_inputs(args.input, args.inputs_file)
    body: dict[str, Any] = {"inputs": inputs}
    if args.tag:
        body["tag"] = args.workflow
    else:
        body["definition"] = load_file(Path(args.workflow))
    accepted = Api(args.server).post("/api/v1/runs", body)
    run_id = accepted["run_id"]
    if not args.follow:
        emit(args, accepted, f"run {run_id} accepted")
        return 0
    if args.output == "text":
        print(f"run {run_id} accepted; following")
    return follow(Api(args.server), run_id, args)


def cmd_run_status(args: argparse.Namespace) -> int:
    run = Api(args.server).get(f"/api/v1/runs/{args.run_id}")
    emit(args, run, format_run(run))
    return 0


def cmd_run_list(args: argparse.Namespace) -> int:
    query = f"?limit={args.limit}" + (f"&status={args.status}" if args.status else "")
    page = Api(args.server).get("/api/v1/runs" + query)
    lines = [f"{r['run_id']}  {r['status']:<10} {r.get('workflow_id') or '(inline)'}" for r in page["items"]]
    emit(args, page, "\n".join(lines) or "no runs")
    return 0


def cmd_run_cancel(args: argparse.Namespace) -> int:
    result = Api(args.server).post(f"/api/v1/runs/{args.run_id}/cancel", {"reason": args.reason})
    emit(args, result, f"run {args.run_id}: cancelling")
    return 0


def cmd_workflow_validate(args: argparse.Namespace) -> int:
    Api(args.server).post("/api/v1/workflows/validate", {"definition": load_file(args.file)})
    emit(args, {"valid": True}, f"{args.file}: valid")
    return 0


def cmd_workflow_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"definition": load_file(args.file)}
    if args.tag is not None:
        body["tag"] = args.tag
    created = Api(args.server).post("/api/v1/workflows", body)
    emit(args, created, f"{created['workflow_id']} version {created['version']}"
                        + (f" (tag {created['tag']})" if created.get("tag") else ""))
    return 0


# --- following a run ------------------------------------------------------------------


def follow(api: Api, run_id: str, args: argparse.Namespace) -> int:
    """Print the run's events as they happen; exit code from its outcome."""
    after: int | None = None
    while True:
        query = f"?after={after}" if after is not None else ""
        events = api.get(f"/api/v1/runs/{run_id}/events{query}")["items"]
        for event in events:
            after = event["offset"]
            line = describe(event)
            if args.output == "json":
                print(json.dumps(event), flush=True)
            elif line:
                print(line, flush=True)
        run = api.get(f"/api/v1/runs/{run_id}")
        if run["status"] in TERMINAL and not events:
            if args.output == "text":
                print(format_run(run))
            return 0 if run["status"] == "completed" else EXIT_RUN_FAILED
        time.sleep(0.2)


def describe(event: dict[str, Any]) -> str | None:
    data = event.get("data", {})
    node = data.get("node_id")
    kind = event["type"]
    lines = {
        "RunSubmitted": "run submitted",
        "NodeScheduled": f"  {node}: scheduled (attempt {data.get('attempt')})",
        "NodeCompleted": f"  {node}: completed -> {short(data.get('output'))}",
        "NodeFailed": f"  {node}: failed: {data.get('error')}",
        "NodeSkipped": f"  {node}: skipped ({data.get('reason')})"
                       + (" [warning]" if data.get("warning") else ""),
        "PatchApplied": f"  patch {data.get('patch_id')} applied (revision {data.get('revision')})",
        "PatchRejected": f"  patch {data.get('patch_id')} rejected: {data.get('reasons')}",
        "RunCompleted": "run completed",
        "RunFailed": f"run failed: {data.get('error')}",
        "RunCancelled": "run cancelled",
    }
    return lines.get(kind)


def format_run(run: dict[str, Any]) -> str:
    lines = [f"run {run['run_id']}: {run['status']}"]
    for node in run.get("nodes", []):
        lines.append(f"  {node['node_id']:<24} {node['status']:<10} attempt {node.get('attempt', 1)}")
    if run.get("error"):
        lines.append(f"error: {run['error']}")
    if run["status"] == "completed":
        lines.append(f"output: {json.dumps(run.get('output'))}")
    return "\n".join(lines)


def short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- input --------------------------------------------------------------------------


def load_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}", EXIT_USAGE) from error
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise CliError(f"{path}: invalid JSON: {error}", EXIT_USAGE) from error
    import yaml  # only this command needs it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CliError(f"{path}: invalid YAML: {error}", EXIT_USAGE) from error


def parse_inputs(pairs: list[str], inputs_file: Path | None) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if inputs_file is not None:
        loaded = load_file(inputs_file)
        if not isinstance(loaded, dict):
            raise CliError(f"{inputs_file}: inputs must be a JSON object", EXIT_USAGE)
        inputs.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--input {pair!r}: expected KEY=VALUE", EXIT_USAGE)
        try:
            inputs[key] = json.loads(raw)
        except json.JSONDecodeError:
            inputs[key] = raw
    return inputs


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.output == "json" else text)


# --- HTTP -----------------------------------------------------------------------------


class Api:
    def __init__(self, base: str) -> None:
        import httpx  # loaded only by commands that talk to the server

        self._httpx = httpx
        self.client = httpx.Client(base_url=base, timeout=30.0)

    def get(self, path: str) -> Any:
        return self._call("GET", path, None)

    def post(self, path: str, body: Any) -> Any:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: Any) -> Any:
        try:
            response = self.client.request(method, path, json=body)
        except self._httpx.TransportError as error:
            raise CliError(f"cannot reach the aob server at {self.client.base_url}: {error}",
                           EXIT_UNREACHABLE) from error
        if response.status_code >= 400:
            raise CliError(problem_text(response), EXIT_API)
        return response.json()


def problem_text(response: Any) -> str:
    try:
        problem = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    detail = problem.get("detail") or problem.get("title") or f"HTTP {response.status_code}"
    errors = problem.get("errors") or []
    lines = [detail] + [f"  {e.get('path') or '/'}: {e.get('message')}" for e in errors]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
