"""Human output: colour where the terminal supports it, tables, one line per event."""

from __future__ import annotations

import json
import os
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
}


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
        "node_failed": lambda: f"failed (attempt {data.get('attempt')}): {data.get('error')}",
        "node_skipped": lambda: (
            f"skipped: {data.get('reason')}" + (" [warning]" if data.get("warning") else "")
        ),
        "approval_required": lambda: (
            f"approval {data.get('approval_id')} required: {data.get('message')}"
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
        "patch_rejected": lambda: (
            f"patch {data.get('patch_id')} rejected: " + "; ".join(data.get("reasons") or [])
        ),
        "cancel_requested": lambda: (
            "cancel requested" + (f": {data['reason']}" if data.get("reason") else "")
        ),
        "workflow_completed": lambda: f"run completed -> {short(data.get('output'))}",
        "workflow_failed": lambda: f"run failed: {data.get('error')}",
        "workflow_cancelled": lambda: (
            "run cancelled" + (f": {data['reason']}" if data.get("reason") else "")
        ),
        "timer_set": lambda: f"{data.get('purpose')} timer set",
        "timer_fired": lambda: "timer fired",
    }
    describe = details.get(name)
    return describe() if describe else name


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
}


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
