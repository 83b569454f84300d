"""`aob run ...`, `aob logs stream` and `aob replay`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aob.cli.client import ApiError, segment
from aob.cli.errors import EXIT_OK
from aob.cli.render import Style, duration, more_hint, short, summary, table, when

if TYPE_CHECKING:
    from aob.cli.main import Context


def start(ctx: Context) -> int:
    from aob.cli.files import load_definition, parse_inputs, sending

    args = ctx.args
    body: dict[str, Any] = {"inputs": parse_inputs(args.input, args.inputs_file)}
    if args.tag:
        body["tag"] = args.workflow
    else:
        body["definition"] = load_definition(args.workflow)
    with sending(None if args.tag else args.workflow, args.inputs_file):
        accepted = ctx.api.post("/api/v1/runs", body)
    if not ctx.json:  # e.g. a node type no worker runs; with -o json they are in `accepted`
        from aob.cli.workflows import print_warnings

        print_warnings(accepted.get("warnings"), args.workflow)
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
    if run["status"] == "waiting":  # say what for, and how to go on
        approvals = _pending_approvals(ctx, run)
        if approvals:
            run = {**run, "pending_approvals": approvals}
        reviews = _pending_reviews(ctx, run)
        if reviews:
            run = {**run, "pending_patch_reviews": reviews}
    decided = _decided_approvals(ctx, run)
    if decided:
        run = {**run, "approvals": decided}
    ctx.emit(run, lambda: format_run(ctx.style, run))
    return EXIT_OK


def _pending_approvals(ctx: Context, run: dict[str, Any]) -> list[dict[str, Any]]:
    from aob.cli.approvals import decide_command

    try:
        page = ctx.api.get("/api/v1/approvals", {"run_id": run["run_id"], "status": "pending"})
    except ApiError:
        return []  # a server without the approvals API
    items = page.get("items", []) if isinstance(page, dict) else page
    if not isinstance(items, list):
        return []
    return [{**item, "decide_command": decide_command(item["approval_id"])} for item in items]


def _decided_approvals(ctx: Context, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's decided approvals: who decided (votes, signal, timeout) and when."""
    try:
        page = ctx.api.get("/api/v1/approvals", {"run_id": run["run_id"], "status": "any"})
    except ApiError:
        return []
    items = page.get("items", []) if isinstance(page, dict) else []
    return [a for a in items if isinstance(a, dict) and a.get("status") != "pending"]


def _pending_reviews(ctx: Context, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's patches held for a person's review (`patch_policy: review`)."""
    try:
        page = ctx.api.get(f"/api/v1/runs/{segment(run['run_id'])}/patches")
    except ApiError:
        return []
    return [
        {**patch, "review_command": _review_command(run["run_id"], patch["patch_id"])}
        for patch in page.get("items", [])
        if patch.get("status") == "proposed" and patch.get("review") == "pending"
    ]


def approval_detail(approval: dict[str, Any]) -> str:
    """Votes towards a quorum, escalation, awaited signals: who, and what is left."""
    from aob.cli.approvals import progress

    policy = approval.get("policy") or {}
    parts = [progress(approval)]
    if policy.get("signals"):
        parts.append(f"or signal {' / '.join(policy['signals'])}")
    if approval.get("comments"):
        parts.append(f"why: {summary(str(approval['comments']), 80)}")
    return "; ".join(parts)


def decided_detail(approval: dict[str, Any]) -> str:
    """A decided approval: its votes when a quorum counted them, and why. Not the
    pending view's "0 of 1 approvals; or signal ..." (one person decides without a
    vote; nothing is awaited any more)."""
    from aob.cli.approvals import progress

    parts = [progress(approval)] if approval.get("votes") else []
    if approval.get("comments"):
        parts.append(f"why: {summary(str(approval['comments']), 80)}")
    return "; ".join(parts)


def _decided_line(style: Style, approval: dict[str, Any]) -> str:
    by = f" by {approval['decided_by']}" if approval.get("decided_by") else ""
    detail = decided_detail(approval)
    return (
        f"\napproval {approval.get('approval_id')} (node {approval.get('node_id')}) "
        f"{style.status(str(approval.get('status')))}{by} at {when(approval.get('decided_at'))}"
        + (f": {detail}" if detail else "")
    )


def _review_command(run_id: str, patch_id: str) -> str:
    return f'aob patch approve|reject {patch_id} --run {run_id} --reason "..."'


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
    lines += usage_lines(style, run.get("usage"))
    for approval in run.get("pending_approvals", []):
        lines.append(
            f"\n{style.paint('waiting for approval', 'magenta')} {approval.get('approval_id')}"
            f" (node {approval.get('node_id')}): {summary(str(approval.get('message', '')))}\n"
            f"  {approval_detail(approval)}\n"
            f"  {approval['decide_command']}"
        )
    lines += [_decided_line(style, approval) for approval in run.get("approvals", [])]
    for patch in run.get("pending_patch_reviews", []):
        by = f" (from agent node {patch['node_id']})" if patch.get("node_id") else ""
        reason = f": {summary(str(patch['reason']))}" if patch.get("reason") else ""
        lines.append(
            f"\n{style.paint('waiting for patch review', 'magenta')} {patch['patch_id']}{by}"
            f"{reason}\n  aob patch show {patch['patch_id']} --run {run['run_id']}   (the diff)"
            f"\n  {patch['review_command']}"
        )
    if run.get("error"):
        lines.append("\n" + style.paint(f"error: {run['error']}", "red"))
    if run["status"] == "completed":
        lines.append("\noutput: " + json.dumps(run.get("output"), indent=2, ensure_ascii=False))
    return "\n".join(lines)


def _node_detail(node: dict[str, Any]) -> str:
    if node.get("carried_from"):
        return f"carried over from {node['carried_from']}: {short(node.get('output'), 40)}"
    if node.get("error"):
        return summary(str(node["error"]), 60)
    if node.get("skip_reason"):
        return short(node["skip_reason"], 60).strip('"')
    if node["status"] == "completed":
        return short(node.get("output"), 60)
    return ""


def usage_lines(style: Style, usage: Any) -> list[str]:
    """LLM tokens and cost per agent node and in total, and the run's budget."""
    if not isinstance(usage, dict) or not usage.get("nodes"):
        return []
    rows = [_usage_row(str(n.get("node_id")), n) for n in usage["nodes"]]
    rows.append(_usage_row("total", usage.get("total") or {}))
    headers = ["LLM USAGE", "CALLS", "PROMPT", "COMPLETION", "CACHED", "TOKENS", "COST USD"]
    lines = ["", table(style, headers, rows)]
    budget = usage.get("budget")
    if isinstance(budget, dict):
        limits = [f"{k} {budget[k]}" for k in ("max_cost_usd", "max_tokens") if k in budget]
        on = budget.get("on_exceeded", "fail")
        lines.append(f"budget     {', '.join(limits) or 'none'} (on exceeded: {on})")
    return lines


def _usage_row(name: str, entry: dict[str, Any]) -> list[str]:
    counts = ("llm_calls", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens")
    return [name, *(str(entry.get(c, 0)) for c in counts), _cost(entry)]


def _cost(entry: dict[str, Any]) -> str:
    """Dollars, or why not: a model without a price has an unknown cost."""
    cost, unpriced = entry.get("cost_usd"), entry.get("unpriced_tokens") or 0
    shown = "-" if cost is None else (f"{cost:.4f}" if cost < 0.01 else f"{cost:.2f}")
    if unpriced:
        shown = "unknown" if cost is None else f"{shown} + unknown"
        shown += f" ({unpriced} tokens unpriced)"
    return shown


def list_runs(ctx: Context) -> int:
    args = ctx.args
    query = {
        "limit": args.limit if args.limit is not None else 20,
        "status": args.status,
        "workflow_id": args.workflow,
        "cursor": args.cursor,
    }
    page = ctx.api.get("/api/v1/runs", query)
    options = [("--status", args.status), ("--workflow", args.workflow), ("--limit", args.limit)]

    def text() -> str:
        if not page["items"]:
            return "no runs"
        rows = [
            [
                r["run_id"],
                r["status"],
                _workflow_name(ctx, r) + (f" v{r['version']}" if r.get("version") else ""),
                when(r.get("submitted_at")),
                duration(r.get("submitted_at"), r.get("finished_at")),
            ]
            for r in page["items"]
        ]
        out = table(ctx.style, ["RUN", "STATUS", "WORKFLOW", "SUBMITTED", "TOOK"], rows, 1)
        if page.get("next_cursor"):
            out += "\n" + more_hint(args, "aob run list", options, page["next_cursor"])
        return out

    ctx.emit(page, text)
    return EXIT_OK


def _workflow_name(ctx: Context, run: dict[str, Any]) -> str:
    """A stored workflow's id, or an inline definition's name (from the run itself)."""
    if run.get("workflow_id"):
        return str(run["workflow_id"])
    try:
        definition = ctx.api.get(f"/api/v1/runs/{segment(run['run_id'])}").get("definition")
    except ApiError:
        definition = None
    name = definition.get("name") if isinstance(definition, dict) else None
    return f"{name} (inline)" if isinstance(name, str) and name else "(inline)"


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
