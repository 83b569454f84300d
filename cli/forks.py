"""`aob run fork` (a new run from a point of a run's history, with edits) and
`aob run diff` (two runs side by side)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aob.cli.client import segment
from aob.cli.errors import EXIT_OK, EXIT_USAGE, CliError
from aob.cli.render import Style, table

if TYPE_CHECKING:
    from aob.cli.main import Context


def fork(ctx: Context) -> int:
    from aob.cli.files import sending
    from aob.cli.runs import _accepted

    args = ctx.args
    body = fork_body(args)
    with sending(args.inputs_file, args.inputs_patch, args.definition_patch):
        accepted = ctx.api.post(f"/api/v1/runs/{segment(args.run_id)}/replay", body)
    if ctx.json or args.follow:
        return _accepted(ctx, accepted, follow_it=args.follow)
    print(fork_line(accepted))
    return EXIT_OK


def fork_body(args: Any) -> dict[str, Any]:
    """The replay request the options ask for."""
    from aob.cli.files import load_file, parse_inputs

    if args.input and args.inputs_patch:
        raise CliError("give --input or --inputs-patch, not both", EXIT_USAGE)
    body: dict[str, Any] = {"reason": args.reason}
    if args.from_event is not None:
        body["from_event"] = args.from_event
    if args.inputs_file:
        body["inputs"] = parse_inputs([], args.inputs_file)
    if args.input:  # KEY=VALUE pairs change those keys only: a merge patch
        body["inputs_patch"] = parse_inputs(args.input, None)
    if args.inputs_patch:
        patch = load_file(args.inputs_patch)
        # A merge patch that is not an object would replace the inputs with itself:
        # inputs must be an object, as --inputs-file says of its file.
        if not isinstance(patch, dict | list):
            raise CliError(
                f"{args.inputs_patch}: inputs must be an object: an inputs patch is a JSON "
                "merge patch (an object) or a JSON Patch (an array)",
                EXIT_USAGE,
            )
        body["inputs_patch"] = patch
    if args.definition_patch:
        operations = load_file(args.definition_patch)
        if not isinstance(operations, list):
            raise CliError(
                f"{args.definition_patch}: a JSON Patch is an array of operations", EXIT_USAGE
            )
        body["definition_patch"] = operations
    return body


def fork_line(accepted: dict[str, Any]) -> str:
    at = accepted.get("from_event")
    point = "from its start" if at is None else f"after event {at}"
    line = f"run {accepted['run_id']} forks {accepted['replay_of']} {point}"
    kept, rerun = accepted.get("seeded_nodes") or [], accepted.get("rerun_nodes") or []
    if kept:
        line += f"; carried over: {', '.join(kept)}"
    if rerun:
        line += f"; run again (affected by the edits): {', '.join(rerun)}"
    return line


def diff(ctx: Context) -> int:
    a, b = ctx.args.run_a, ctx.args.run_b
    compared = ctx.api.get(f"/api/v1/runs/{segment(a)}/diff/{segment(b)}")
    ctx.emit(compared, lambda: format_diff(ctx.style, compared))
    return EXIT_OK


def format_diff(style: Style, compared: dict[str, Any]) -> str:
    lines = [_run_line(style, "A", compared["a"]), _run_line(style, "B", compared["b"])]
    if compared["identical"]:
        lines.append("\nthe runs are the same: definition, inputs, node statuses and outputs")
    for name in ("definition", "inputs"):
        section = compared[name]
        lines.append(f"\n{style.paint(name, 'bold')}: {_same(section['equal'])}")
        if section["diff"]:
            lines.append(_painted(style, section["diff"]))
    lines += ["", _node_table(style, compared["nodes"])]
    for node in compared["nodes"]:
        if node["output_diff"]:
            title = f"output of node {node['node_id']}"
            lines += ["", style.paint(title, "bold"), _painted(style, node["output_diff"])]
    if compared["output"]["diff"]:
        lines += [
            "",
            style.paint("run output", "bold"),
            _painted(style, compared["output"]["diff"]),
        ]
    if compared.get("truncated"):
        lines.append("\n(large values were cut: see the markers above)")
    return "\n".join(lines)


def _run_line(style: Style, label: str, run: dict[str, Any]) -> str:
    line = f"{style.paint(label, 'bold')}  {run['run_id']}  {style.status(run['status'])}"
    fork = run.get("fork")
    if fork:
        at = fork.get("from_event")
        line += f"  forked from {fork['run_id']}"
        line += " from its start" if at is None else f" after event {at}"
        edits = fork.get("edits") or {}
        changed = [k for k in ("inputs", "inputs_patch", "definition_patch") if k in edits]
        if changed:
            line += f" (edits: {', '.join(changed)})"
    return line


def _same(equal: bool) -> str:
    return "same" if equal else "differs"


def _node_table(style: Style, nodes: list[dict[str, Any]]) -> str:
    rows = [
        [n["node_id"], _status(n["a"]), _status(n["b"]), _same(n["output_equal"])] for n in nodes
    ]
    return table(style, ["NODE", "A", "B", "OUTPUT"], rows)


def _status(node: dict[str, Any] | None) -> str:
    if node is None:
        return "-"
    carried = " (carried over)" if node.get("carried_from") else ""
    return f"{node['status']}{carried}"


def _painted(style: Style, diff_text: str) -> str:
    colours = {"+": "green", "-": "red", "@": "cyan"}
    return "\n".join(
        style.paint(line, colours[line[0]]) if line[:1] in colours else line
        for line in diff_text.splitlines()
    )
