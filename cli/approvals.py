"""`aob approve ID approve|reject --reason ...`: decide a human-in-the-loop request (or
vote, when it needs a quorum); `aob approvals list`: the requests awaiting a decision;
`aob run signal RUN NAME --data JSON`: send a signal a hitl node may wait for."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aob.cli.client import segment
from aob.cli.errors import EXIT_OK, EXIT_USAGE, CliError
from aob.cli.render import summary, table, when

if TYPE_CHECKING:
    from aob.cli.main import Context

PAST = {"approve": "approved", "reject": "rejected"}


def decide(ctx: Context) -> int:
    args = ctx.args
    body = {"decision": args.decision, "comments": args.reason}
    result = ctx.api.post(f"/api/v1/approvals/{segment(args.approval_id)}/decide", body)
    ctx.emit(result, lambda: _decided_text(ctx, result))
    return EXIT_OK


def _decided_text(ctx: Context, result: dict[str, Any]) -> str:
    args = ctx.args
    reason = f": {args.reason}" if args.reason else ""
    if result.get("status") == "pending" and quorum_of(result) > 1:  # a vote, not yet decided
        again = " (you had voted already: your first vote stands)"
        return (
            f"vote {args.decision} recorded on approval {args.approval_id}{reason}; "
            f"{progress(result)}" + (again if result.get("duplicate_vote") else "")
        )
    return f"approval {args.approval_id} {ctx.style.status(PAST[args.decision])}{reason}"


def quorum_of(approval: dict[str, Any]) -> int:
    return int((approval.get("policy") or {}).get("quorum", 1))


def progress(approval: dict[str, Any]) -> str:
    """Quorum progress: "1 of 2 approvals (alice); escalated to level 1"."""
    votes = approval.get("votes") or []
    approving = [v["voter"] for v in votes if v.get("decision") == "approve"]
    rejecting = [v["voter"] for v in votes if v.get("decision") != "approve"]
    text = f"{len(approving)} of {quorum_of(approval)} approvals"
    text += f" ({', '.join(approving)})" if approving else ""
    text += f", rejected by {', '.join(rejecting)}" if rejecting else ""
    if approval.get("level"):
        text += f"; escalated to level {approval['level']}"
    return text


def signal(ctx: Context) -> int:
    """`aob run signal RUN NAME --data JSON [--key K]`."""
    args = ctx.args
    try:
        payload = None if args.data is None else json.loads(args.data)
    except ValueError as error:
        raise CliError(f"--data is not JSON: {error}", EXIT_USAGE) from None
    path = f"/api/v1/runs/{segment(args.run_id)}/signals/{segment(args.name)}"
    result = ctx.api.request(
        "POST", path, body=payload, query={"key": args.key} if args.key else None
    )
    ctx.emit(result, lambda: f"signal {args.name!r} sent to run {args.run_id}")
    return EXIT_OK


def list_approvals(ctx: Context) -> int:
    """`aob approvals list`: the server shows only the caller's tenant's approvals."""
    args = ctx.args
    page = ctx.api.get("/api/v1/approvals", {"status": args.status, "run_id": args.run})
    items: list[dict[str, Any]] = page.get("items", []) if isinstance(page, dict) else []
    for item in items:
        if item.get("status") == "pending":
            item["decide_command"] = decide_command(item["approval_id"])
    ctx.emit({"items": items}, lambda: format_approvals(ctx, items))
    return EXIT_OK


def decide_command(approval_id: str) -> str:
    return f'aob approve {approval_id} approve|reject --reason "..."'


def format_approvals(ctx: Context, items: list[dict[str, Any]]) -> str:
    if not items:
        return f"no {ctx.args.status} approvals" if ctx.args.status != "any" else "no approvals"
    rows = [
        [
            a["approval_id"],
            a.get("status") or "-",
            a.get("run_id") or "-",
            a.get("node_id") or "-",
            when(a.get("requested_at")),
            when(a.get("deadline")),
            summary(str(a.get("message") or ""), 60),
        ]
        for a in items
    ]
    headers = ["APPROVAL", "STATUS", "RUN", "NODE", "REQUESTED", "DEADLINE", "MESSAGE"]
    lines = [table(ctx.style, headers, rows, statuses=1)]
    pending = [a for a in items if "decide_command" in a]
    if pending:
        lines.append("")
        lines += [f"  {a['decide_command']}" for a in pending]
    return "\n".join(lines)
