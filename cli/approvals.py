"""`aob approve ID approve|reject --reason ...`: decide a human-in-the-loop request;
`aob approvals list`: the requests awaiting a decision."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aob.cli.client import segment
from aob.cli.errors import EXIT_OK
from aob.cli.render import summary, table, when

if TYPE_CHECKING:
    from aob.cli.main import Context

PAST = {"approve": "approved", "reject": "rejected"}


def decide(ctx: Context) -> int:
    args = ctx.args
    body = {"decision": args.decision, "comments": args.reason}
    result = ctx.api.post(f"/api/v1/approvals/{segment(args.approval_id)}/decide", body)
    ctx.emit(
        result,
        lambda: (
            f"approval {args.approval_id} {ctx.style.status(PAST[args.decision])}"
            + (f": {args.reason}" if args.reason else "")
        ),
    )
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
