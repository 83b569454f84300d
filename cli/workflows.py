"""`aob workflow validate|list|show|create`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from aob.cli.client import segment
from aob.cli.errors import EXIT_OK
from aob.cli.files import load_definition, sending
from aob.cli.render import table, when

if TYPE_CHECKING:
    from aob.cli.main import Context


def validate(ctx: Context) -> int:
    """Valid: exit 0, with one line on stderr per warning (e.g. a node type no worker
    runs); invalid: the server's 422 becomes one line per problem and exit 2."""
    definition = load_definition(ctx.args.file)
    with sending(ctx.args.file):
        result = ctx.api.post("/api/v1/workflows/validate", {"definition": definition})
    if not isinstance(result, dict) or result.get("valid") is not True:
        # Whatever answered is not aob's validation (`[]`, `{}`, an empty 204): never
        # "valid". main() names the address unless aob itself answered this (a bug).
        raise ValueError(f"not a validation answer: {result!r:.80}")
    data = result
    if not ctx.json:  # with --output json the warnings are in the document
        print_warnings(data.get("warnings"), ctx.args.file)
    ctx.emit(data, f"{ctx.args.file}: {ctx.style.status('valid')}")
    return EXIT_OK


def print_warnings(warnings: Any, source: str) -> None:
    """`source: warning: path: message` on stderr, one line per warning."""
    for warning in warnings if isinstance(warnings, list) else []:
        if isinstance(warning, dict):
            where = warning.get("path") or "/"
            print(f"{source}: warning: {where}: {warning.get('message')}", file=sys.stderr)


def list_workflows(ctx: Context) -> int:
    page = ctx.api.get("/api/v1/workflows")

    def text() -> str:
        items: list[dict[str, Any]] = page.get("items", [])
        if not items:
            return "no workflows"
        tags: dict[str, list[str]] = {}
        for tag in ctx.api.get("/api/v1/tags").get("items", []):
            tags.setdefault(tag["workflow_id"], []).append(f"{tag['tag']}@{tag['version']}")
        rows = [
            [
                w["workflow_id"],
                str(w.get("version", "-")),
                str(w.get("versions", "-")),
                when(w.get("created_at")),
                w.get("created_by") or "-",
                ", ".join(tags.get(w["workflow_id"], [])),
            ]
            for w in items
        ]
        headers = ["WORKFLOW", "LATEST", "VERSIONS", "CREATED", "BY", "TAGS"]
        return table(ctx.style, headers, rows)

    ctx.emit(page, text)
    return EXIT_OK


def show(ctx: Context) -> int:
    query = {"version": ctx.args.version} if ctx.args.version is not None else None
    workflow = ctx.api.get(f"/api/v1/workflows/{segment(ctx.args.ref)}", query)

    def text() -> str:
        import yaml  # only for showing definitions the way they are usually written

        head = (
            f"{ctx.style.paint(workflow['workflow_id'], 'bold')} version {workflow['version']}"
            f"  (created {when(workflow.get('created_at'))} by {workflow.get('created_by', '-')})"
        )
        body = yaml.safe_dump(workflow["definition"], sort_keys=False, allow_unicode=True)
        return f"{head}\n\n{body.rstrip()}"

    ctx.emit(workflow, text)
    return EXIT_OK


def create(ctx: Context) -> int:
    body: dict[str, Any] = {"definition": load_definition(ctx.args.file)}
    if ctx.args.tag is not None:
        body["tag"] = ctx.args.tag
    with sending(ctx.args.file):
        created = ctx.api.post("/api/v1/workflows", body)
    tag = f" (tag {created['tag']})" if created.get("tag") else ""
    ctx.emit(created, f"{created['workflow_id']} version {created['version']}{tag}")
    return EXIT_OK
