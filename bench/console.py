"""The web console in Debian's chromium against a live `aob server dev`:

- time to first render of the runs page (first row drawn) with N runs in the store;
- time to lay out (dagre) and draw a 200-node DAG;
- delay from an event in the log (its occurred_at) to its node's colour change in the
  run page's DAG, measured in the browser, p50 and p95.

    .venv/bin/python -m bench.console [--runs 10000] [--data-dir DIR]

`--data-dir` keeps the seeded store between invocations (seeding 10,000 runs is the
slow part); runs already there count.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import sync_playwright

from tests.console.live import CHROMIUM, DevServer, start_dev_server

TINY = {
    "name": "tiny",
    "nodes": [{"id": "a", "type": "noop", "config": {"output": 1}}],
    "edges": [],
}
CHAIN_LENGTH = 20
SEED_CONCURRENCY = 32

FIRST_ROW = """() => new Promise((resolve) => {
  const seen = () => document.querySelector('#runs-body tr');
  if (seen()) return resolve(performance.now());
  new MutationObserver((_, observer) => {
    if (seen()) { observer.disconnect(); resolve(performance.now()); }
  }).observe(document.documentElement, {childList: true, subtree: true});
})"""

LAYOUT_200 = """async () => {
  const {layoutGraph, DagView} = await import('/console/js/dag.js');
  const nodes = [], edges = [];
  for (let i = 0; i < 200; i++) {
    nodes.push({id: `node_${i}`, type: 'transform', config: {expr: '1'}});
  }
  for (let i = 1; i < 200; i++) {
    edges.push({from: `node_${Math.floor((i - 1) / 2)}`, to: `node_${i}`});
    if (i > 10 && i % 3 === 0) edges.push({from: `node_${i - 7}`, to: `node_${i}`});
  }
  const definition = {name: 'big', nodes, edges};
  const layout = [], draw = [];
  for (let round = 0; round < 5; round++) {
    let t = performance.now();
    layoutGraph(definition);
    layout.push(performance.now() - t);
    const host = document.createElement('div');
    document.body.append(host);
    t = performance.now();
    new DagView(host).setDefinition(definition);
    draw.push(performance.now() - t);
    host.remove();
  }
  return {layout, draw, edges: edges.length};
}"""

# Before the console's scripts: note each event as it arrives and each colour change.
PROBE = """(() => {
  window.__events = []; window.__changes = [];
  const Native = window.EventSource;
  window.EventSource = function (url, options) {
    const source = new Native(url, options);
    const add = source.addEventListener.bind(source);
    source.addEventListener = (name, listener, ...rest) => add(name, (message) => {
      try { const e = JSON.parse(message.data);
        window.__events.push({node: e.node_id, type: e.type, at: e.occurred_at}); } catch (_) {}
      listener(message);
    }, ...rest);
    return source;
  };
  window.EventSource.CLOSED = Native.CLOSED;
  new MutationObserver((records) => {
    const now = Date.now();
    for (const r of records) {
      const el = r.target;
      if (r.attributeName === 'data-state' && el.dataset && el.dataset.nodeId) {
        window.__changes.push({node: el.dataset.nodeId, state: el.dataset.state, at: now});
      }
    }
  }).observe(document, {attributes: true, subtree: true, attributeFilter: ['data-state']});
})();"""

STATE_OF = {"NodeScheduled": "running", "NodeCompleted": "completed"}


def chain() -> dict[str, Any]:
    nodes = [{"id": "gate", "type": "hitl", "config": {"message": "go?"}}]
    nodes += [
        {"id": f"n{i}", "type": "transform", "config": {"expr": str(i)}}
        for i in range(CHAIN_LENGTH)
    ]
    edges = [{"from": "gate", "to": "n0"}]
    edges += [{"from": f"n{i}", "to": f"n{i + 1}"} for i in range(CHAIN_LENGTH - 1)]
    return {"name": "bench-chain", "nodes": nodes, "edges": edges}


async def seed(server: DevServer, wanted: int) -> int:
    """Submit tiny runs until the store holds `wanted`; returns how many it holds."""
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=60) as client:
        have = await _count(client, wanted)
        missing = wanted - have
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(missing):
            queue.put_nowait(i)

        async def submitter() -> None:
            while not queue.empty():
                queue.get_nowait()
                response = await client.post("/api/v1/runs", json={"definition": TINY})
                response.raise_for_status()

        await asyncio.gather(*(submitter() for _ in range(SEED_CONCURRENCY)))
        return have + missing


async def _count(client: httpx.AsyncClient, cap: int) -> int:
    count, cursor = 0, None
    while count < cap:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/runs", params=params)).json()
        count += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    return count


def first_render(browser: Any, server: DevServer, rounds: int = 5) -> list[float]:
    times = []
    for _ in range(rounds):
        context = browser.new_context()
        page = context.new_page()
        page.goto(server.console_url)  # logs in, then opens the runs page
        times.append(page.evaluate(FIRST_ROW))
        context.close()
    return times


def colour_delays(browser: Any, server: DevServer, runs: int = 3) -> list[float]:
    delays: list[float] = []
    for _ in range(runs):
        run_id = server.submit(chain())
        context = browser.new_context()
        context.add_init_script(PROBE)
        page = context.new_page()
        page.goto(server.console_url)
        page.wait_for_selector("#runs-body")
        page.goto(f"{server.base_url}/#/runs/{run_id}")
        page.wait_for_selector('g.node[data-node-id="gate"][data-state="waiting"]')
        with server.client() as client:
            (approval,) = client.get("/api/v1/approvals", params={"run_id": run_id}).json()["items"]
            client.post(
                f"/api/v1/approvals/{approval['approval_id']}/decide", json={"decision": "approve"}
            ).raise_for_status()
        last = f"n{CHAIN_LENGTH - 1}"
        page.wait_for_selector(f'g.node[data-node-id="{last}"][data-state="completed"]')
        events, changes = page.evaluate("[window.__events, window.__changes]")
        context.close()
        for event in events:
            state = STATE_OF.get(event["type"])
            if state is None or not str(event["node"]).startswith("n"):
                continue
            change = next(
                (
                    c
                    for c in changes
                    if c["node"] == event["node"] and c["state"] == state and c["at"] >= event["at"]
                ),
                None,
            )
            if change is not None:
                delays.append(change["at"] - event["at"])
    return delays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aob-bench-console-") as scratch:
        data_dir = args.data_dir or Path(scratch) / "data"
        server = start_dev_server(data_dir)
        try:
            started = time.monotonic()
            held = asyncio.run(seed(server, args.runs))
            print(f"store holds {held} runs (seeding took {time.monotonic() - started:.1f} s)")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox"]
                )
                render = first_render(browser, server)
                page = browser.new_page()
                page.goto(server.console_url)
                page.wait_for_selector("#runs-body")
                layout = page.evaluate(LAYOUT_200)
                delays = colour_delays(browser, server)
                browser.close()
        finally:
            server.stop()
    print(
        f"runs page, first row drawn after navigation ({held} runs): "
        f"median {statistics.median(render):.0f} ms, max {max(render):.0f} ms"
    )
    print(
        f"200-node DAG ({layout['edges']} edges): dagre layout median "
        f"{statistics.median(layout['layout']):.0f} ms; layout + SVG median "
        f"{statistics.median(layout['draw']):.0f} ms"
    )
    delays.sort()
    p95 = delays[int(len(delays) * 0.95) - 1]
    print(
        f"event in the log -> colour change in the DAG: p50 {statistics.median(delays):.0f} ms,"
        f" p95 {p95:.0f} ms ({len(delays)} events)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
