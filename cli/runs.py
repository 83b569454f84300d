"""`aob run ...`, `aob logs stream` and `aob replay`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aob.cli.client import ApiError, segment
from aob.cli.errors import EXIT_OK
from aob.cli.render import Style, duration, short, table, when

if TYPE_CHECKING:
    from aob.cli.main import Context


def start(ctx: Context) -> int:
    from aob.cli.files import load_definition, parse_inputs

    args = ctx.args
    body: dict[str, Any] = {"inputs": parse_inputs(args.input, args.inputs_file)}
    if args.tag:
        body["tag"] = args.workflow
    else:
        body["definition"] = load_definition(args.workflow)
    accepted = ctx.api.post("/api/v1/runs", body)
    return _accepted(ctx, accepted, follow_it=args.follow)


def _accepted(ctx: Context, accepted: dict[str, Any], *, follow_it: bool) -> int:
    from aob.cli.follow import follow

    run_id = accepted["run_id"]
    if not follow_it:
        ctx.emit(accepted, f"run {run_id} accepted")
        return EXIT_OK
    if ctx.json:
        print(json.dumps(accepted), flush=True)  # one line: the events follow as JSON lines
    else:
        print(f"run {run_id} accepted; following it (Ctrl-C stops following, not the run)")
    return follow(ctx.api, run_id, output=ctx.output, style=ctx.style)


def status(ctx: Context) -> int:
    run = ctx.api.get(f"/api/v1/runs/{segment(ctx.args.run_id)}")
    approvals = _pending_approvals(ctx, run) if run["status"] == "waiting" else []
    if approvals:
        run = {**run, "pending_approvals": approvals}
    ctx.emit(run, lambda: format_run(ctx.style, run))
    return EXIT_OK


def _pending_approvals(ctx: Context, run: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        page = ctx.api.get("/api/v1/approvals", {"run_id": run["run_id"], "status": "pending"})
    except ApiError:
        return []  # a server without the approvals API
    items = page.get("items", []) if isinstance(page, dict) else page
    return items if isinstance(items, list) else []


def format_run(style: Style, run: dict[str, Any]) -> str:
    workflow = run.get("workflow_id") or "(inline definition)"
    if run.get("version"):
        workflow += f" v{run['version']}"
    lines = [
        f"{style.paint('run', 'bold')} {run['run_id']}  {style.status(run['status'])}",
        f"workflow   {workflow}" + (f"  (tag {run['tag']})" if run.get("tag") else ""),
        f"submitted  {when(run.get('submitted_at'))} by {run.get('submitted_by', '-')}",
    ]
    if run.get("finished_at"):
        took = duration(run.get("submitted_at"), run["finished_at"])
        lines.append(f"finished   {when(run['finished_at'])} (took {took})")
    if run.get("revision"):
        lines.append(f"revision   {run['revision']} (patched)")
    nodes = run.get("nodes") or []
    if nodes:
        rows = [
            [
                n["node_id"],
                n.get("type") or "-",
                n["status"],
                str(n.get("attempt") or "-"),
                str(n.get("iteration", 0)),
                duration(n.get("started_at") or n.get("scheduled_at"), n.get("finished_at")),
                _node_detail(n),
            ]
            for n in nodes
        ]
        headers = ["NODE", "TYPE", "STATUS", "ATTEMPT", "ITER", "TIME", "DETAIL"]
        lines += ["", table(style, headers, rows, statuses=2)]
    for approval in run.get("pending_approvals", []):
        lines.append(
            f"\n{style.paint('waiting for approval', 'magenta')} {approval.get('approval_id')}"
            f" (node {approval.get('node_id')}): {approval.get('message', '')}\n"
            f"  aob approve {approval.get('approval_id')} approve|reject --reason ..."
        )
    if run.get("error"):
        lines.append("\n" + style.paint(f"error: {run['error']}", "red"))
    if run["status"] == "completed":
        lines.append("\noutput: " + json.dumps(run.get("output"), indent=2, ensure_ascii=False))
    return "\n".join(lines)


def _node_detail(node: dict[str, Any]) -> str:
    if node.get("error"):
        return short(node["error"], 60)
    if node.get("skip_reason"):
        return short(node["skip_reason"], 60).strip('"')
    if node["status"] == "completed":
        return short(node.get("output"), 60)
    return ""


def list_runs(ctx: Context) -> int:
    args = ctx.args
    query = {
        "limit": args.limit,
        "status": args.status,
        "workflow_id": args.workflow,
        "cursor": args.cursor,
    }
    page = ctx.api.get("/api/v1/runs", query)

    def text() -> str:
        if not page["items"]:
            return "no runs"
        rows = [
            [
                r["run_id"],
                r["status"],
                (r.get("workflow_id") or "(inline)")
                + (f" v{r['version']}" if r.get("version") else ""),
                when(r.get("submitted_at")),
                duration(r.get("submitted_at"), r.get("finished_at")),
            ]
            for r in page["items"]
        ]
        out = table(ctx.style, ["RUN", "STATUS", "WORKFLOW", "SUBMITTED", "TOOK"], rows, 1)
        if page.get("next_cursor"):
            out += f"\nmore: aob run list --cursor {page['next_cursor']}"
        return out

    ctx.emit(page, text)
    return EXIT_OK


def cancel(ctx: Context) -> int:
    run_id = ctx.args.run_id
    result = ctx.api.post(f"/api/v1/runs/{segment(run_id)}/cancel", {"reason": ctx.args.reason})
    ctx.emit(result, f"run {run_id}: cancelling")
    return EXIT_OK


def logs(ctx: Context) -> int:
    from aob.cli.follow import follow

    args = ctx.args
    return follow(
        ctx.api,
        args.run_id,
        output=ctx.output,
        style=ctx.style,
        nodes=args.node,
        errors_only=args.filter == "errors",
    )


def replay(ctx: Context) -> int:
    body: dict[str, Any] = {}
    if ctx.args.from_event is not None:
        body["from_event"] = ctx.args.from_event
    accepted = ctx.api.post(f"/api/v1/runs/{segment(ctx.args.run_id)}/replay", body)
    if not ctx.json and not ctx.args.follow:
        seeded = accepted.get("seeded_nodes") or []
        note = f" ({len(seeded)} node(s) kept their outputs)" if seeded else ""
        print(f"run {accepted['run_id']} replays {ctx.args.run_id}{note}")
        return EXIT_OK
    return _accepted(ctx, accepted, follow_it=ctx.args.follow)
