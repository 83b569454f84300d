"""`aob`: run, watch and steer workflows from the command line.

It talks to the API over HTTP only and imports no server code. To start fast,
this module needs only argparse: each command's module (and whatever heavy
library it needs) is imported when that command runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, Any, NoReturn

import aob
from aob.cli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_CODES_HELP,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
)

if TYPE_CHECKING:
    import argparse

    from aob.cli.client import Api
    from aob.cli.render import Style

DESCRIPTION = "Run, watch and steer aob workflows."
EPILOG = f"""\
examples:
  aob run start workflow.yaml -f            start a run and follow it live
  aob run start workflow.json --output json | jq -r .run_id
  aob logs stream RUN --node enrich          one node's events, live
  aob approvals list                          pending approvals, with the command to decide
  aob approve APPROVAL approve --reason "LGTM"
  aob workflow validate workflow.json && aob run start workflow.json
  aob admin deadletters list                 records the services set aside

server address and credentials: --server/--token/--actor, else AOB_SERVER/AOB_TOKEN/
AOB_ACTOR, else the keys server/token/actor of ~/.config/aob/config.toml (or --config,
AOB_CONFIG). The default server is http://127.0.0.1:8080 (`aob server dev`).

{EXIT_CODES_HELP}
"""
RUN_STATUSES = ["running", "waiting", "completed", "failed", "cancelled"]


class Context:
    """What a command gets: its arguments, the API client and the output settings."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.output: str = args.output
        self._api: Api | None = None
        self._style: Style | None = None

    @property
    def api(self) -> Api:
        if self._api is None:
            from aob.cli.client import Api
            from aob.cli.config import resolve

            connection = resolve(
                server=self.args.server,
                token=self.args.token,
                actor=self.args.actor,
                config=self.args.config,
                timeout=self.args.timeout,
            )
            self._api = Api(connection)
        return self._api

    @property
    def style(self) -> Style:
        if self._style is None:
            from aob.cli.render import Style

            self._style = Style.for_stream(sys.stdout, self.args.color)
        return self._style

    @property
    def json(self) -> bool:
        return self.output == "json"

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        """`data` as JSON with --output json, else the human text."""
        if self.json:
            import json

            print(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            print(text() if callable(text) else text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:  # answered before argparse is even imported
        print(f"aob {aob.__version__}")
        return 0
    if argv[:1] == ["server"]:
        return exec_server(argv[1:])
    as_json = _wants_json(argv)
    context: Context | None = None
    try:
        args = build_parser().parse_args(argv)
        context = Context(args)
        module_name, function_name = args.handler.split(":")
        module = import_module(f"aob.cli.{module_name}")
        code: int = getattr(module, function_name)(context)
        return code
    except CliError as error:
        return _report(error, as_json)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return _report(CliError("interrupted", EXIT_INTERRUPTED), as_json, quiet=True)
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
        # An answer without what aob sends: from something else at that address?
        api = context._api if context is not None else None
        if api is not None and api.last_answer is not None and not api.is_aob():
            return _report(api.not_aob(), as_json)
        return _internal_error(error, as_json)
    except Exception as error:  # a bug
        return _internal_error(error, as_json)


def _internal_error(error: Exception, as_json: bool) -> int:
    if (os.environ.get("AOB_DEBUG") or "0").lower() not in ("0", "false", "no", "off"):
        raise error
    message = f"internal error: {type(error).__name__}: {error} (set AOB_DEBUG=1 for the traceback)"
    return _report(CliError(message, EXIT_INTERNAL), as_json)


def _report(error: CliError, as_json: bool, *, quiet: bool = False) -> int:
    """`aob: <message>` on stderr; with --output json, the error as JSON on stdout too,
    so that a script reading stdout always gets an answer."""
    if not quiet:
        print(f"aob: {error}", file=sys.stderr)
    if as_json:
        import json

        print(json.dumps(error.as_json(), indent=2, ensure_ascii=False), flush=True)
    return error.code


def _wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for JSON output (known before it is parsed, so
    that even a usage error is reported as JSON)."""
    for i, arg in enumerate(argv):
        if arg in ("-o", "--output") and argv[i + 1 : i + 2] == ["json"]:
            return True
        if arg in ("-ojson", "--output=json"):
            return True
    return False


def exec_server(server_args: list[str]) -> NoReturn:
    """Replace this process with the server, so the CLI itself never imports it."""
    os.execv(sys.executable, [sys.executable, "-m", "aob.platform", *server_args])


# --- the command tree ---------------------------------------------------------------


def _parser_class() -> type[argparse.ArgumentParser]:
    import argparse

    class Parser(argparse.ArgumentParser):
        """Usage errors are `CliError`s, reported like any other (as JSON when asked)."""

        def error(self, message: str) -> NoReturn:
            self.print_usage(sys.stderr)
            raise CliError(f"{message} (see {self.prog} --help)", EXIT_USAGE)

    return Parser


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options accepted before or after the command (`aob -o json run list` or
    `aob run list -o json`); the command's own copy only overrides when given."""

    import argparse

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--server",
        type=_server_url,
        default=default(None),
        metavar="URL",
        help="API address (AOB_SERVER; default http://127.0.0.1:8080)",
    )
    group.add_argument(
        "--token", default=default(None), help="bearer token sent to the server (AOB_TOKEN)"
    )
    group.add_argument(
        "--actor",
        default=default(None),
        help="who is acting, recorded on events (AOB_ACTOR); only a server with "
        "AOB_AUTH=off reads it: under AOB_AUTH=tokens (the default) the token decides",
    )
    group.add_argument(
        "--config",
        default=default(None),
        metavar="FILE",
        help="config file (AOB_CONFIG; default ~/.config/aob/config.toml)",
    )
    group.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default=default("text"),
        help="text for people, json for scripts (default text)",
    )
    group.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default=default("auto"),
        help="colour output (default auto: when stdout is a terminal)",
    )
    group.add_argument(
        "--timeout",
        type=_seconds,
        default=default(30.0),
        metavar="SECONDS",
        help="HTTP request timeout (default 30)",
    )


def _server_url(value: str) -> str:
    """--server: an http(s) URL with a host and a port from 1 to 65535."""
    import argparse

    from aob.cli.config import server_problem

    problem = server_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _seconds(value: str) -> float:
    """--timeout: a finite number of seconds above 0 (0 would make sockets
    non-blocking, a negative one is refused by the socket library)."""
    import argparse
    import math

    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: the timeout must be a number above 0")
    return seconds


def _version(value: str) -> int:
    """A workflow version: versions are numbered from 1."""
    import argparse

    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a version number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: versions are numbered from 1")
    return number


def _identifier(value: str) -> str:
    """An id or name given on the command line: not empty (an empty path segment
    names no run, workflow or approval: the server would answer a redirect)."""
    import argparse

    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


class _Tree:
    def __init__(self, sub: Any) -> None:
        self.sub = sub

    def command(
        self, name: str, handler: str, help_text: str, **kw: Any
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.sub.add_parser(
            name, help=help_text, description=help_text, **kw
        )
        _common(parser, top=False)
        parser.set_defaults(handler=handler)
        return parser

    def group(self, name: str, help_text: str) -> _Tree:
        parser = self.sub.add_parser(name, help=help_text, description=help_text)
        return _Tree(
            parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
        )


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = _parser_class()(
        prog="aob",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aob {aob.__version__}")
    _common(parser, top=True)
    root = _Tree(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    root.sub.add_parser("server", help="run aob's services (try: aob server dev --help)")
    _run_commands(root.group("run", "start, inspect and cancel runs"))
    _logs_commands(root.group("logs", "a run's events"))
    _approve_command(root)
    _approvals_commands(root.group("approvals", "human-in-the-loop requests"))
    _patch_commands(root.group("patch", "agents' patches to running workflows"))
    _replay_command(root)
    _workflow_commands(root.group("workflow", "validate, store and inspect workflows"))
    _admin_commands(root.group("admin", "operate the platform (admin role)"))
    return parser


def _run_commands(run: _Tree) -> None:
    start = run.command("start", "runs:start", "start a run of a workflow file (JSON or YAML)")
    start.add_argument("workflow", metavar="FILE", help="workflow file (or, with --tag, a tag)")
    start.add_argument("--tag", action="store_true", help="FILE names a stored tag instead")
    start.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a run input; VALUE is parsed as JSON when it is JSON (repeatable)",
    )
    start.add_argument("--inputs-file", metavar="FILE", help="a JSON or YAML file of run inputs")
    start.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="follow the run live until it ends (exit 1 if it fails)",
    )
    status = run.command("status", "runs:status", "a run's status and its nodes")
    status.add_argument("run_id", type=_identifier, metavar="RUN")
    listing = run.command("list", "runs:list_runs", "recent runs, newest first")
    listing.add_argument("--status", choices=RUN_STATUSES)
    listing.add_argument("--workflow", metavar="ID", help="only runs of this workflow")
    listing.add_argument("--limit", type=int, help="at most this many (default 20)")
    listing.add_argument("--cursor", help="continue a listing (from --output json's next_cursor)")
    cancel = run.command("cancel", "runs:cancel", "cancel a run")
    cancel.add_argument("run_id", type=_identifier, metavar="RUN")
    cancel.add_argument("--reason", default="", help="why, recorded on the run")
    signal = run.command(
        "signal",
        "approvals:signal",
        "send a named signal to a run: it ends a hitl node waiting for it (config.signals), "
        "now or once the node starts",
    )
    signal.add_argument("run_id", type=_identifier, metavar="RUN")
    signal.add_argument("name", type=_identifier, metavar="NAME", help="the signal's name")
    signal.add_argument("--data", metavar="JSON", help="the signal's payload, JSON (default null)")
    signal.add_argument(
        "--key", help="idempotency key: sending the same key again records nothing new"
    )
    _fork_commands(run)


def _fork_commands(run: _Tree) -> None:
    fork = run.command(
        "fork",
        "forks:fork",
        "a new run from a point of a run's history, optionally with edited inputs or a "
        "patched definition (completed nodes the edits affect run again, the others keep "
        "their outputs)",
    )
    fork.add_argument("run_id", type=_identifier, metavar="RUN")
    fork.add_argument(
        "--from-event", type=int, metavar="N", help="the event id to fork after (default: start)"
    )
    fork.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one input (VALUE as JSON when it is JSON; repeatable)",
    )
    fork.add_argument("--inputs-file", metavar="FILE", help="replace the inputs with this file's")
    fork.add_argument(
        "--inputs-patch",
        metavar="FILE",
        help="edit the inputs: a JSON Patch (an array) or a JSON merge patch (an object)",
    )
    fork.add_argument(
        "--definition-patch",
        metavar="FILE",
        help="a JSON Patch (JSON or YAML) over the workflow as it stood at the fork point",
    )
    fork.add_argument("--reason", default="", help="why, recorded on the fork")
    fork.add_argument("-f", "--follow", action="store_true", help="follow the new run")
    compare = run.command(
        "diff",
        "forks:diff",
        "two runs side by side: definition diff, node statuses and output diffs",
        epilog="exit 0 whether or not the runs differ (with --output json, `identical` says); "
        "3 when the server refuses, e.g. a run of another tenant (404)",
    )
    compare.add_argument("run_a", type=_identifier, metavar="A")
    compare.add_argument("run_b", type=_identifier, metavar="B")


def _logs_commands(logs: _Tree) -> None:
    stream = logs.command(
        "stream", "runs:logs", "a run's events from its start, live until it ends (SSE)"
    )
    stream.add_argument("run_id", type=_identifier, metavar="RUN")
    stream.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NODE",
        help="only this node's events (repeatable)",
    )
    stream.add_argument(
        "--filter",
        choices=["errors"],
        help="errors: only failures (failed nodes and runs, rejected patches)",
    )


def _approve_command(root: _Tree) -> None:
    approve = root.command("approve", "approvals:decide", "approve or reject a HITL request")
    approve.add_argument(
        "approval_id", type=_identifier, metavar="ID", help="the approval (see `aob run status`)"
    )
    approve.add_argument("decision", choices=["approve", "reject"])
    approve.add_argument("--reason", default="", help="comments recorded with the decision")


def _approvals_commands(approvals: _Tree) -> None:
    listing = approvals.command(
        "list",
        "approvals:list_approvals",
        "approvals awaiting a decision (your tenant's), with the command that decides each",
    )
    listing.add_argument("--run", type=_identifier, metavar="RUN", help="only this run's")
    listing.add_argument(
        "--status",
        choices=["pending", "approved", "rejected", "cancelled", "any"],
        default="pending",
        help="default pending",
    )


def _patch_commands(patch: _Tree) -> None:
    listing = patch.command("list", "patches:list_patches", "a run's patches")
    listing.add_argument("run_id", type=_identifier, metavar="RUN")
    for name, handler, help_text in [
        ("show", "patches:show", "a patch, with the diff it makes to the workflow"),
        ("approve", "patches:approve", "approve a patch awaiting review"),
        ("reject", "patches:reject", "reject a patch awaiting review"),
    ]:
        command = patch.command(name, handler, help_text)
        command.add_argument("patch_id", type=_identifier, metavar="PATCH")
        command.add_argument(
            "--run", type=_identifier, metavar="RUN", help="the patch's run (found if omitted)"
        )
        if name != "show":
            command.add_argument("--reason", default="", help="why, recorded with the decision")


def _replay_command(root: _Tree) -> None:
    replay = root.command(
        "replay",
        "runs:replay",
        "start a new run from a point in a run's history (completed nodes keep their outputs)",
    )
    replay.add_argument("run_id", type=_identifier, metavar="RUN")
    replay.add_argument(
        "--from-event",
        type=int,
        metavar="N",
        help="the event id to fork after (default: the start of the run)",
    )
    replay.add_argument("-f", "--follow", action="store_true", help="follow the new run")


def _workflow_commands(workflow: _Tree) -> None:
    validate = workflow.command(
        "validate",
        "workflows:validate",
        "validate a workflow file",
        epilog="exit 0 when valid, with one line on stderr per warning (e.g. a node type no "
        "worker runs, skipped at run time); exit 2 when invalid, one line per problem",
    )
    validate.add_argument("file", metavar="FILE")
    workflow.command("list", "workflows:list_workflows", "stored workflows")
    show = workflow.command("show", "workflows:show", "a stored workflow, by tag or id")
    show.add_argument("ref", type=_identifier, metavar="TAG_OR_ID")
    show.add_argument("--version", type=_version, help="this version of the workflow id")
    create = workflow.command("create", "workflows:create", "store a workflow file as a version")
    create.add_argument("file", metavar="FILE")
    create.add_argument("--tag", help="tag to point at it (default: the workflow's name)")


def _admin_commands(admin: _Tree) -> None:
    letters = admin.group(
        "deadletters", "records the services set aside (undecodable, or failing to process)"
    )
    listing = letters.command("list", "deadletters:list_letters", "dead letters, oldest first")
    listing.add_argument("--limit", type=int, help="at most this many (default 50)")
    listing.add_argument("--cursor", help="continue a listing (from its next_cursor)")
    replay = letters.command(
        "replay",
        "deadletters:replay",
        "append a dead letter's original record to its topic again (after a fix)",
    )
    replay.add_argument(
        "letter_id", type=_identifier, metavar="ID", help="as `aob admin deadletters list` shows"
    )


if __name__ == "__main__":
    sys.exit(main())
