"""Following a run's live stream, reconnecting on its own.

Every event carries its position in the run's log (`id`); after a lost connection
the stream is reopened after the last position seen, so nothing is missed and
nothing repeats. The stream ends with the run; its status decides the exit code.

`follow` also shows the live output of agent nodes (`llm_delta` messages: tokens and
tool steps, docs/streaming.md) as it arrives. Such a stream's ids are cursors
(`OFFSET:EPOCH:POSITION`); it is reopened with the last cursor seen.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from aob.cli.client import Api, Unreachable, segment
from aob.cli.errors import EXIT_OK, EXIT_RUN_FAILED
from aob.cli.render import LiveView, Style, stdout_is_terminal

HEARTBEAT_S = 5.0  # asked of the server; silence for 3x this means the connection is dead
RECONNECT_FOR_S = 60.0  # give up after this long without a working stream
FIRST_DELAY_S, MAX_DELAY_S = 0.1, 2.0
DELTA_EVENT = "llm_delta"


def watch(
    api: Api,
    run_id: str,
    on_event: Callable[[dict[str, Any]], None],
    *,
    after: int = -1,
    nodes: Iterable[str] = (),
    errors_only: bool = False,
    on_interrupt: Callable[[str], None] | None = None,
    reconnect_for: float = RECONNECT_FOR_S,
    on_delta: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Call `on_event` for each event after position `after` (and `on_delta` for each
    delta of the run's agents, when given); returns the `end` message."""
    last = after
    cursor: str | None = None  # streams with deltas resume from the last cursor
    last_delta = -1
    node_list = list(nodes)
    connected_once = False
    lost_since: float | None = None
    delay = FIRST_DELAY_S
    while True:
        query = {
            "last_event_id": last,
            "node": node_list or None,
            "filter": "errors" if errors_only else None,
            "heartbeat": HEARTBEAT_S,
            "deltas": "true" if on_delta is not None else None,
            "cursor": cursor,
        }
        reason = "the server closed the stream"
        try:
            for sse in api.stream(
                f"/api/v1/runs/{segment(run_id)}/stream", query, None, HEARTBEAT_S * 3
            ):
                connected_once, lost_since, delay = True, None, FIRST_DELAY_S
                if sse.event == "end":
                    end: dict[str, Any] = json.loads(sse.data)
                    return end
                if sse.event == "reconnect":
                    reason = "the server asked to reconnect"
                    break
                if sse.id is None:
                    continue
                message = json.loads(sse.data)
                if on_delta is not None:
                    cursor = sse.id
                    if sse.event == DELTA_EVENT:
                        if message["position"] > last_delta:  # else: shown already
                            last_delta = message["position"]
                            on_delta(message)
                        continue
                    position = int(message["id"])
                elif sse.id.lstrip("-").isdigit():
                    position = int(sse.id)
                else:
                    continue
                if position <= last:
                    continue  # already shown before the connection was lost
                last = position
                on_event(message)
        except Unreachable as error:
            if not connected_once:
                raise
            reason = str(error)
        now = time.monotonic()
        if lost_since is None:
            lost_since = now
            if on_interrupt is not None:
                on_interrupt(reason)
        elif now - lost_since > reconnect_for:
            raise Unreachable(
                f"lost the stream of run {run_id} and could not resume it within "
                f"{reconnect_for:g} s: {reason}"
            )
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)


def follow(
    api: Api,
    run_id: str,
    *,
    output: str,
    style: Style,
    nodes: Iterable[str] = (),
    errors_only: bool = False,
) -> int:
    """Show a run's events until it ends; exit code 0 if it completed, else 1."""
    view = LiveView(sys.stdout, style, live=output == "text" and stdout_is_terminal())

    def on_event(message: dict[str, Any]) -> None:
        if output == "json":
            print(json.dumps(message), flush=True)
        else:
            view.event(message)

    def on_interrupt(reason: str) -> None:
        view.note(f"aob: stream interrupted ({reason}); resuming")

    def on_delta(message: dict[str, Any]) -> None:
        if output == "json":
            print(json.dumps(message), flush=True)
            return
        line = delta_line(message)
        if line is not None:
            view.finish(line)  # a line above the node block (redrawn with the next event)

    end = watch(
        api,
        run_id,
        on_event,
        nodes=nodes,
        errors_only=errors_only,
        on_interrupt=on_interrupt,
        on_delta=on_delta,
    )
    status = str(end.get("status"))
    if output == "json":
        print(json.dumps(end), flush=True)
    else:
        view.finish(f"run {run_id}: {style.status(status)}")
    return EXIT_OK if status == "completed" else EXIT_RUN_FAILED


def delta_line(message: dict[str, Any]) -> str | None:
    """One line of an agent's live output: `node ▸ text` (newlines shown as ⏎), a tool
    call or result, or None for what the event lines already say (usage)."""
    node, kind, data = message.get("node_id"), message.get("kind"), message.get("data") or {}
    if kind == "text":
        return f"  {node} ▸ {str(data.get('text', '')).replace(chr(10), '⏎')}"
    if kind == "tool_call" and data.get("name"):
        return f"  {node} ▸ calls {data['name']}"
    if kind == "tool_result":
        return f"  {node} ▸ {data.get('name')} answered in {data.get('elapsed_ms')} ms"
    if kind == "truncated":
        return f"  {node} ▸ (live output truncated; the final answer is in the run)"
    return None
