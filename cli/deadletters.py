"""`aob admin deadletters list|replay`: records the services set aside (admin role)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aob.cli.client import segment
from aob.cli.errors import EXIT_OK
from aob.cli.render import more_hint, table, when

if TYPE_CHECKING:
    from aob.cli.main import Context

PATH = "/api/v1/admin/deadletters"


def list_letters(ctx: Context) -> int:
    args = ctx.args
    limit = args.limit if args.limit is not None else 50
    page = ctx.api.get(PATH, {"limit": limit, "cursor": args.cursor})
    if not ctx.json:  # the bytes are for scripts and replays, not for a terminal
        page = {**page, "items": [_without_bytes(item) for item in page["items"]]}
    ctx.emit(page, lambda: format_page(ctx, page))
    return EXIT_OK


def replay(ctx: Context) -> int:
    letter_id = ctx.args.letter_id
    replayed = ctx.api.post(f"{PATH}/{segment(letter_id)}/replay")
    ctx.emit(
        replayed,
        f"dead letter {letter_id} replayed: appended to {replayed['topic']}"
        f"/{replayed['partition']}@{replayed['offset']}",
    )
    return EXIT_OK


def format_page(ctx: Context, page: dict[str, Any]) -> str:
    if not page["items"]:
        return "no dead letters"
    rows = [
        [
            item["id"],
            when(item.get("dead_lettered_at")),
            item.get("service", "-"),
            _source(item),
            item.get("run_id") or "-",
            item.get("reason") or item.get("error", ""),
        ]
        for item in page["items"]
    ]
    out = table(ctx.style, ["ID", "AT", "SERVICE", "RECORD", "RUN", "REASON"], rows)
    if page.get("next_cursor"):
        command = "aob admin deadletters list"
        out += "\n" + more_hint(
            ctx.args, command, [("--limit", ctx.args.limit)], page["next_cursor"]
        )
    return out


def _source(item: dict[str, Any]) -> str:
    source = item.get("source")
    if not source:
        return "-"
    kind = item.get("type") or "undecodable"
    return f"{kind} {source['topic']}/{source['partition']}@{source['offset']}"


def _without_bytes(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "value_base64"}
