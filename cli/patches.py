"""`aob patch list|show|approve|reject`: agents' patches to running workflows.

A patch is named by its id alone, as the seed's examples do; its run is looked up
(`--run` skips the search).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from aob.cli.client import ApiError, segment
from aob.cli.errors import EXIT_API, EXIT_OK, CliError
from aob.cli.render import Style, table, when

if TYPE_CHECKING:
    from aob.cli.main import Context

SEARCH_RUNS = 200  # how many recent runs to search for a patch given without --run


def list_patches(ctx: Context) -> int:
    run_id = ctx.args.run_id
    page = ctx.api.get(f"/api/v1/runs/{segment(run_id)}/patches")

    def text() -> str:
        items: list[dict[str, Any]] = page.get("items", [])
        if not items:
            return f"run {run_id} has no patches"
        rows = [
            [
                p["patch_id"],
                p["status"],
                p.get("review") or "-",
                p.get("node_id") or "(person)",
                str(p.get("revision") or "-"),
                str(len(p.get("operations") or [])),
                when(p.get("proposed_at")),
                p.get("reason") or "",
            ]
            for p in items
        ]
        headers = ["PATCH", "STATUS", "REVIEW", "BY", "REVISION", "OPS", "PROPOSED", "REASON"]
        return table(ctx.style, headers, rows, statuses=1)

    ctx.emit(page, text)
    return EXIT_OK


def show(ctx: Context) -> int:
    run_id, patch = locate(ctx, ctx.args.patch_id, ctx.args.run)
    diff = definition_diff(ctx, run_id, patch)
    data = {**patch, "run_id": run_id, "unified_diff": diff}
    ctx.emit(data, lambda: format_patch(ctx.style, data, diff))
    return EXIT_OK


def approve(ctx: Context) -> int:
    return _decide(ctx, "approve")


def reject(ctx: Context) -> int:
    return _decide(ctx, "reject")


def _decide(ctx: Context, decision: str) -> int:
    run_id, patch = locate(ctx, ctx.args.patch_id, ctx.args.run)
    path = f"/api/v1/runs/{segment(run_id)}/patches/{segment(patch['patch_id'])}/{decision}"
    try:
        result = ctx.api.post(path, {"reason": ctx.args.reason})
    except ApiError as error:
        if error.is_missing_route:
            raise CliError(
                f"this server cannot {decision} patches (it has no POST {path})", EXIT_API
            ) from None
        raise
    status = result.get("status", decision + "d") if isinstance(result, dict) else decision + "d"
    ctx.emit(result, lambda: f"patch {patch['patch_id']} {ctx.style.status(str(status))}")
    return EXIT_OK


# --- finding a patch ----------------------------------------------------------------


def locate(ctx: Context, patch_id: str, run_id: str | None) -> tuple[str, dict[str, Any]]:
    """The patch's run and the patch."""
    if run_id is not None:
        patch = _in_run(ctx, run_id, patch_id)
        if patch is None:
            raise CliError(f"run {run_id} has no patch {patch_id}", EXIT_API)
        return run_id, patch
    try:
        found = ctx.api.get(f"/api/v1/patches/{segment(patch_id)}")
        return found["run_id"], found
    except ApiError as error:
        if not error.is_missing_route:
            raise
    return _search(ctx, patch_id)


def _in_run(ctx: Context, run_id: str, patch_id: str) -> dict[str, Any] | None:
    path = f"/api/v1/runs/{segment(run_id)}/patches"
    try:
        patch: dict[str, Any] = ctx.api.get(f"{path}/{segment(patch_id)}")
        return patch
    except ApiError as error:
        if not error.is_missing_route:
            if error.status == 404 and "patch" in str(error).lower():
                return None
            raise
    items: list[dict[str, Any]] = ctx.api.get(path).get("items", [])
    return next((p for p in items if p["patch_id"] == patch_id), None)


def _search(ctx: Context, patch_id: str) -> tuple[str, dict[str, Any]]:
    """Look through the most recent runs' patches (servers without a patch index)."""
    cursor: str | None = None
    searched = 0
    while searched < SEARCH_RUNS:
        page = ctx.api.get("/api/v1/runs", {"limit": 100, "cursor": cursor})
        for run in page["items"]:
            searched += 1
            items = ctx.api.get(f"/api/v1/runs/{segment(run['run_id'])}/patches")["items"]
            for patch in items:
                if patch["patch_id"] == patch_id:
                    return run["run_id"], _in_run(ctx, run["run_id"], patch_id) or patch
        cursor = page.get("next_cursor")
        if not cursor:
            break
    raise CliError(
        f"no patch {patch_id} in the {searched} most recent runs; name its run with --run RUN",
        EXIT_API,
    )


# --- the diff -----------------------------------------------------------------------


def definition_diff(ctx: Context, run_id: str, patch: dict[str, Any]) -> str:
    """A unified diff of the workflow before and after the patch, in YAML."""
    import jsonpatch
    import yaml

    before = _definition_before(ctx, run_id, patch)
    try:
        after = jsonpatch.apply_patch(before, patch.get("operations") or [])
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
        return f"(the patch does not apply to the workflow it was proposed for: {error})"

    def lines(doc: Any) -> list[str]:
        text: str = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        return text.splitlines(keepends=True)

    diff = difflib.unified_diff(
        lines(before), lines(after), "before", f"after {patch['patch_id']}", n=3
    )
    return "".join(diff) or "(no change)"


def _definition_before(ctx: Context, run_id: str, patch: dict[str, Any]) -> Any:
    """The run's base definition with the patches applied before this one."""
    import jsonpatch

    first = ctx.api.get(f"/api/v1/runs/{segment(run_id)}/events", {"limit": 1})["items"]
    if not first or first[0]["type"] != "RunSubmitted":
        raise CliError(f"cannot find the definition run {run_id} started with", EXIT_API)
    definition = first[0]["data"]["definition"]
    patches = ctx.api.get(f"/api/v1/runs/{segment(run_id)}/patches")["items"]
    applied = sorted(
        (p for p in patches if p["status"] == "applied" and p.get("revision")),
        key=lambda p: p["revision"],
    )
    for earlier in applied:
        if earlier["patch_id"] == patch["patch_id"]:
            break
        if patch.get("revision") is None and (earlier.get("proposed_at") or 0) > (
            patch.get("proposed_at") or 0
        ):
            break
        definition = jsonpatch.apply_patch(definition, earlier.get("operations") or [])
    return definition


def format_patch(style: Style, patch: dict[str, Any], diff: str) -> str:
    lines = [
        f"{style.paint('patch', 'bold')} {patch['patch_id']}  {style.status(patch['status'])}"
        f"  (run {patch.get('run_id', '-')})",
        f"proposed  {when(patch.get('proposed_at'))}",
    ]
    if patch.get("node_id"):
        lines.append(f"agent     {patch['node_id']}")
    if patch.get("reason"):
        lines.append(f"reason    {patch['reason']}")
    if patch.get("review"):
        review = style.status(patch["review"])
        if patch.get("reviewed_by"):
            review += f" by {patch['reviewed_by']}" + (
                f": {patch['review_reason']}" if patch.get("review_reason") else ""
            )
        lines.append(f"review    {review}")
    if patch.get("revision"):
        lines.append(f"revision  {patch['revision']}")
    if patch.get("added_nodes"):
        lines.append(f"adds      {', '.join(patch['added_nodes'])}")
    for reason in patch.get("reasons") or []:
        lines.append(style.paint(f"rejected: {reason}", "red"))
    lines.append("")
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            lines.append(style.paint(line, "bold"))
        elif line.startswith("+"):
            lines.append(style.paint(line, "green"))
        elif line.startswith("-"):
            lines.append(style.paint(line, "red"))
        elif line.startswith("@@"):
            lines.append(style.paint(line, "cyan"))
        else:
            lines.append(line)
    return "\n".join(lines)
