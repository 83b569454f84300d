"""Human output: colour where the terminal supports it, tables, one line per event."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}
STATUS_STYLE = {
    "completed": "green",
    "approved": "green",
    "applied": "green",
    "valid": "green",
    "failed": "red",
    "rejected": "red",
    "cancelled": "yellow",
    "cancelling": "yellow",
    "waiting": "magenta",
    "pending": "magenta",
    "proposed": "magenta",
    "running": "cyan",
    "scheduled": "blue",
    "retrying": "yellow",
    "skipped": "dim",
}


class Style:
    """Applies ANSI styles when enabled: `style.paint("text", "red")`."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: TextIO, mode: str = "auto") -> Style:
        if mode != "auto":
            return cls(mode == "always")
        if os.environ.get("NO_COLOR"):
            return cls(False)
        if os.environ.get("FORCE_COLOR"):
            return cls(True)
        return cls(stream.isatty() and os.environ.get("TERM") != "dumb")

    def paint(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles:
            return text
        codes = ";".join(_CODES[s] for s in styles if s in _CODES)
        return f"\x1b[{codes}m{text}\x1b[0m" if codes else text

    def status(self, status: str, width: int = 0) -> str:
        return self.paint(status.ljust(width), STATUS_STYLE.get(status, ""))


def table(
    style: Style, headers: Sequence[str], rows: Sequence[Sequence[str]], statuses: int | None = None
) -> str:
    """Aligned columns; column `statuses` (an index) is coloured by its value."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    last = len(headers) - 1
    head = [h if i == last else h.ljust(widths[i]) for i, h in enumerate(headers)]
    lines = ["  ".join(style.paint(h, "bold") for h in head)]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            width = 0 if i == last else widths[i]
            cells.append(style.status(cell, width) if i == statuses else cell.ljust(width))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def more_hint(args: Any, command: str, options: Sequence[tuple[str, Any]], cursor: str) -> str:
    """`more: aob ... --cursor X`: the command that shows the next page, with every
    option of this one that was given (None: not given), after the connection flags
    given (the next page is on the same server; never --token, a secret)."""
    import shlex

    given = [
        ("--server", getattr(args, "server", None)),
        ("--config", getattr(args, "config", None)),
    ]
    words = [command]
    for flag, value in [*given, *options]:
        if value is not None:
            words += [flag, shlex.quote(str(value))]
    return f"more: {' '.join(words)} --cursor {shlex.quote(cursor)}"


def clock(ms: int | None) -> str:
    """Local wall-clock time of an epoch-ms instant, to the millisecond."""
    if ms is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def when(ms: int | None) -> str:
    """Local date and time of an epoch-ms instant."""
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def duration(start_ms: int | None, end_ms: int | None) -> str:
    if start_ms is None or end_ms is None:
        return "-"
    ms = max(end_ms - start_ms, 0)
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms // 60_000}m{(ms % 60_000) // 1000:02d}s"


def short(value: Any, limit: int = 72) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_HTML = re.compile(r"<(!doctype\s+html|html|head|body)\b", re.IGNORECASE)
_HTML_TITLE = re.compile(r"<title[^>]*>([^<]*)</title>", re.IGNORECASE)
_HTML_HIDDEN = re.compile(r"<(script|style)\b[^>]*>[^<]*</\1>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^>]*>")


def summary(text: str, limit: int = 160) -> str:
    """`text` on one line, at most `limit` characters: an HTML page (an error page a
    server sent) by its title, or its words without the markup."""
    match = _HTML.search(text)
    if match is not None:
        import html  # only for pages (2 ms at every start otherwise)

        title = _HTML_TITLE.search(text)
        words = title.group(1) if title else _HTML_TAG.sub(" ", _HTML_HIDDEN.sub(" ", text))
        text = f"{text[: match.start()]} an HTML page: {html.unescape(words)}"
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --- events -------------------------------------------------------------------------

_EVENT_STYLE = {
    "node_completed": "green",
    "workflow_completed": "green",
    "node_failed": "red",
    "workflow_failed": "red",
    "patch_rejected": "red",
    "node_skipped": "dim",
    "workflow_cancelled": "yellow",
    "cancel_requested": "yellow",
    "approval_required": "magenta",
    "approval_decided": "magenta",
    "patch_proposed": "cyan",
    "patch_applied": "cyan",
    "node_scheduled": "blue",
    "node_started": "blue",
    "patch_review_requested": "magenta",
    "loop_exhausted": "yellow",
    "patch_reviewed": "magenta",
}
# Fields every event of a node has: not worth repeating in its line.
_ROUTINE_FIELDS = frozenset({"run_id", "node_id", "iteration", "attempt"})
# Fields whose value reads well alone ("not retried: jq errors are deterministic").
_SELF_EXPLAINING = frozenset({"reason", "message", "error", "detail"})


_PAST = {"approve": "approved", "reject": "rejected"}


def event_detail(message: Mapping[str, Any]) -> str:
    """What an event says, in a few words."""
    data = message.get("data") or {}
    name = message.get("event", "")
    details: dict[str, Callable[[], str]] = {
        "workflow_started": lambda: (
            "run submitted"
            + (f" ({data['workflow_id']} v{data['version']})" if data.get("workflow_id") else "")
        ),
        "node_scheduled": lambda: (
            f"scheduled (attempt {data.get('attempt')}"
            + (f", iteration {data['iteration']}" if data.get("iteration") else "")
            + ")"
        ),
        "node_started": lambda: f"started on {data.get('worker')}",
        "node_completed": lambda: f"completed -> {short(data.get('output'))}",
        "node_failed": lambda: (
            f"failed (attempt {data.get('attempt')}): {summary(str(data.get('error')), 200)}"
            + (f"; not retried: {data['not_retried']}" if data.get("not_retried") else "")
        ),
        "loop_exhausted": lambda: (
            f"loop {data.get('source')} -> {data.get('target')} stopped at its bound "
            f"({data.get('iterations')} iterations) with its condition still true"
            + ("; the run fails (on_limit: fail)" if data.get("failed") else " [warning]")
        ),
        "node_skipped": lambda: (
            f"skipped: {data.get('reason')}" + (" [warning]" if data.get("warning") else "")
        ),
        "approval_required": lambda: (
            f"approval {data.get('approval_id')} required: {summary(str(data.get('message')))}"
            f" (aob approve {data.get('approval_id')} approve|reject)"
        ),
        "approval_decided": lambda: (
            f"approval {data.get('approval_id')} "
            f"{_PAST.get(data.get('decision', ''), data.get('decision'))} "
            f"by {data.get('decided_by')}"
            + (f": {data['comments']}" if data.get("comments") else "")
        ),
        "patch_proposed": lambda: (
            f"patch {data.get('patch_id')} proposed"
            + (f": {data['reason']}" if data.get("reason") else "")
        ),
        "patch_applied": lambda: (
            f"patch {data.get('patch_id')} applied (revision {data.get('revision')})"
        ),
        "patch_review_requested": lambda: (
            f"patch {data.get('patch_id')} awaits review: {patch_review_command(message)}"
        ),
        "patch_reviewed": lambda: (
            f"patch {data.get('patch_id')} "
            f"{_PAST.get(data.get('decision', ''), data.get('decision'))} in review "
            f"by {data.get('reviewed_by') or message.get('actor') or 'someone'}"
            + (f": {data['reason']}" if data.get("reason") else " (no reason given)")
        ),
        "agent_usage_recorded": lambda: _agent_usage(data),
        "patch_rejected": lambda: (
            f"patch {data.get('patch_id')} rejected: " + "; ".join(data.get("reasons") or [])
        ),
        "cancel_requested": lambda: (
            "cancel requested" + (f": {data['reason']}" if data.get("reason") else "")
        ),
        "workflow_completed": lambda: f"run completed -> {short(data.get('output'))}",
        "workflow_failed": lambda: f"run failed: {summary(str(data.get('error')), 200)}",
        "workflow_cancelled": lambda: (
            "run cancelled" + (f": {data['reason']}" if data.get("reason") else "")
        ),
        "timer_set": lambda: f"{data.get('purpose')} timer set",
        "timer_fired": lambda: "timer fired",
    }
    describe = details.get(name)
    return summary(describe() if describe else _in_words(name, data), 400)


def patch_review_command(message: Mapping[str, Any]) -> str:
    """The commands that decide a patch awaiting review."""
    data = message.get("data") or {}
    patch_id, run_id = data.get("patch_id"), message.get("run_id") or data.get("run_id")
    run = f" --run {run_id}" if run_id else ""
    return f"aob patch approve {patch_id}{run} (or: aob patch reject {patch_id}{run} --reason ...)"


def _agent_usage(data: Mapping[str, Any]) -> str:
    calls, tools = data.get("llm_calls", 0), data.get("tool_calls", 0)
    text = (
        f"agent used {data.get('model')}: {calls} LLM call{'s' if calls != 1 else ''}, "
        f"{data.get('total_tokens', 0)} tokens ({data.get('prompt_tokens', 0)} prompt, "
        f"{data.get('completion_tokens', 0)} completion)"
    )
    if tools:
        text += f", {tools} tool call{'s' if tools != 1 else ''}"
    if data.get("outcome") not in (None, "completed"):
        text += f"; {data['outcome']}"
    return text


def _in_words(name: str, data: Mapping[str, Any]) -> str:
    """An event this CLI does not know yet: its name in words and its plain fields."""
    said = [
        str(value) if key in _SELF_EXPLAINING else f"{key.replace('_', ' ')} {value}"
        for key, value in data.items()
        if key not in _ROUTINE_FIELDS and isinstance(value, str | int | float) and value != ""
    ]
    words = name.replace("_", " ")
    return f"{words}: {', '.join(said)}" if said else words


def event_line(style: Style, message: Mapping[str, Any]) -> str:
    name = message.get("event", "")
    node = message.get("node_id") or ""
    return "  ".join(
        [
            style.paint(clock(message.get("occurred_at")), "dim"),
            style.paint(f"#{message.get('id')}".rjust(5), "dim"),
            style.paint(node.ljust(16), "bold") if node else " " * 16,
            style.paint(event_detail(message), _EVENT_STYLE.get(name, "")),
        ]
    )


# --- the live view of a followed run --------------------------------------------------

_NODE_STATUS = {
    "node_scheduled": "scheduled",
    "node_started": "running",
    "node_completed": "completed",
    "node_failed": "failed",
    "node_skipped": "skipped",
    "approval_required": "waiting",
    "approval_decided": "running",
}
_UNFINISHED = frozenset({"pending", "scheduled", "running", "waiting", "retrying"})


class LiveView:
    """Event lines scrolling above a block of node states redrawn in place (terminals),
    or just the event lines (pipes)."""

    def __init__(self, out: TextIO, style: Style, *, live: bool) -> None:
        self.out = out
        self.style = style
        self.live = live
        self.nodes: dict[str, str] = {}
        self._drawn = 0

    def seed(self, node_ids: Sequence[str]) -> None:
        for node_id in node_ids:
            self.nodes.setdefault(node_id, "pending")

    def event(self, message: Mapping[str, Any], *, show: bool = True) -> None:
        self._track(message)
        if show:
            self._print(event_line(self.style, message))
        elif self.live:
            self._print(None)

    def finish(self, text: str) -> None:
        self._print(text, block=False)

    def note(self, text: str) -> None:
        """A line for stderr, without breaking the block drawn on the terminal."""
        self._print(None, block=False)
        print(text, file=sys.stderr, flush=True)
        self._print(None)

    def _track(self, message: Mapping[str, Any]) -> None:
        name = message.get("event", "")
        node = message.get("node_id")
        data = message.get("data") or {}
        if name == "workflow_started":
            definition = data.get("definition") or {}
            self.seed([n["id"] for n in definition.get("nodes", []) if isinstance(n, dict)])
        elif name == "patch_applied":
            self.seed(data.get("added_nodes") or [])
        elif name == "timer_set" and data.get("purpose") == "retry" and data.get("node_id"):
            self.nodes[data["node_id"]] = "retrying"
        elif name in ("workflow_cancelled", "workflow_failed"):
            for node_id, status in self.nodes.items():
                if status in _UNFINISHED:
                    self.nodes[node_id] = "cancelled"
        elif node and name in _NODE_STATUS:
            self.nodes[node] = _NODE_STATUS[name]

    def _print(self, line: str | None, *, block: bool = True) -> None:
        if self.live and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # back to the block's top, clear
            self._drawn = 0
        if line is not None:
            self.out.write(line + "\n")
        if self.live and block and self.nodes:
            block_text = self._block()
            self.out.write(block_text + "\n")
            self._drawn = block_text.count("\n") + 1
        self.out.flush()

    def _block(self) -> str:
        width = max(len(n) for n in self.nodes)
        counts: dict[str, int] = {}
        for status in self.nodes.values():
            counts[status] = counts.get(status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in counts.items())
        lines = [self.style.paint(f"── nodes: {summary}", "dim")]
        for node_id, status in self.nodes.items():
            lines.append(f"  {node_id.ljust(width)}  {self.style.status(status)}")
        return "\n".join(lines)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
