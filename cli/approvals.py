"""`aob approve ID approve|reject --reason ...`: decide a human-in-the-loop request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aob.cli.client import segment
from aob.cli.errors import EXIT_OK

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
