"""The console's live parts in a real browser: a run's stream resumed after a network
cut, the runs list kept live by the runs feed, and the time filter on the server."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route, expect

from tests.console.live import CuttableProxy, DevServer
from tests.console.test_console import chain, node, review


@pytest.fixture
def proxy(server: DevServer) -> Iterator[CuttableProxy]:
    target = urlsplit(server.base_url)
    cuttable = CuttableProxy((target.hostname or "127.0.0.1", target.port or 80))
    yield cuttable
    cuttable.close()


def _log_in_at(page: Page, base_url: str, token: str) -> None:
    page.goto(f"{base_url}/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()


def _approve(server: DevServer, run_id: str) -> None:
    with server.client() as client:
        (approval,) = client.get("/api/v1/approvals", params={"run_id": run_id}).json()["items"]
        decided = client.post(
            f"/api/v1/approvals/{approval['approval_id']}/decide", json={"decision": "approve"}
        )
        decided.raise_for_status()


def _until_finished(server: DevServer, run_id: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while True:
            status = str(client.get(f"/api/v1/runs/{run_id}").json()["status"])
            if status in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
                return status
            time.sleep(0.05)


def test_the_dag_resumes_after_its_stream_is_cut(
    server: DevServer, proxy: CuttableProxy, page: Page
) -> None:
    run_id = server.submit(review("resume"), {"title": "r"})
    _log_in_at(page, proxy.base_url, server.admin_token)
    page.goto(f"{proxy.base_url}/#/runs/{run_id}")
    expect(node(page, "gate")).to_have_attribute("data-state", "waiting")
    expect(page.locator('#timeline li[data-type="ApprovalRequested"]')).to_have_count(1)
    last_seen = page.locator("#timeline li").last.get_attribute("data-offset")

    proxy.cut()  # the network drops: the browser's stream breaks, reconnects are refused
    _approve(server, run_id)  # the rest of the run happens while the page is cut off
    assert _until_finished(server, run_id) == "completed"
    assert node(page, "gate").get_attribute("data-state") == "waiting"  # nothing came

    proxy.restore()
    for node_id in ("draft", "gate", "publish"):
        expect(node(page, node_id)).to_have_attribute("data-state", "completed")
    expect(page.locator("#run-status .badge")).to_have_text("completed")
    expect(page.locator("#live")).to_have_text("run finished")
    with server.client() as client:
        events = client.get(f"/api/v1/runs/{run_id}/events").json()["items"]
    shown = page.locator("#timeline li").evaluate_all(
        "(items) => items.map((i) => i.dataset.offset)"
    )
    # Every event once, in log order: none lost in the cut, none applied twice.
    assert shown == [str(e["offset"]) for e in events]
    # It resumed after the last event the page had, not from the start.
    resumed = [
        r for r in proxy.requests if f"/api/v1/runs/{run_id}/stream" in r.split("\r\n", 1)[0]
    ][1:]
    assert resumed, proxy.requests
    assert any(
        # the id is a cursor OFFSET:EPOCH:POSITION: the page asks for live output too
        re.search(rf"(?im)^last-event-id: {last_seen}(:[^\r\n]*)?\r?$", r)
        or re.search(rf"(last_event_id|cursor)={last_seen}(&|%3A|$| )", r)
        for r in resumed
    ), resumed


def test_runs_list_follows_the_runs_feed_without_reloading(server: DevServer, page: Page) -> None:
    waiting = server.submit(review("feed-waiting"), {"title": "f"})
    _log_in_at(page, server.base_url, server.admin_token)
    expect(page.locator("#runs-live")).to_have_text("live")
    expect(page.locator(f'tr[data-run-id="{waiting}"] .badge')).to_have_text("waiting")

    # With the list endpoint refused, only the feed can change what the page shows.
    listed: list[str] = []

    def refuse(route: Route) -> None:
        listed.append(route.request.url)
        route.abort()

    page.route(re.compile(r"/api/v1/runs\?"), refuse)
    _approve(server, waiting)
    expect(page.locator(f'tr[data-run-id="{waiting}"] .badge')).to_have_text("completed")
    assert listed == []  # updated in place, not reloaded
    page.unroute(re.compile(r"/api/v1/runs\?"))

    # A new run of the first page appears (the feed asks for the page again).
    fresh = server.submit(chain())
    expect(page.locator(f'tr[data-run-id="{fresh}"] .badge')).to_have_text("completed")
    assert page.locator("#runs-body tr").first.get_attribute("data-run-id") == fresh


def test_runs_feed_protocol(server: DevServer) -> None:
    """The feed's protocol, over plain HTTP: ready first, then the rows of the caller's
    tenant as they change; an id the feed does not know asks the client to resync."""
    import httpx

    other = server.token("olga", ["viewer"])  # a viewer of the tenant follows it too
    url = f"{server.base_url}/api/v1/streams/runs"
    with httpx.stream("GET", url, params={"access_token": other}, timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        ready = _next_event(lines)
        assert ready[0] == "ready"
        assert '"resync":true' in ready[1]
        run_id = server.submit(chain())
        while True:
            name, data = _next_event(lines)
            if name == "run" and run_id in data:
                break
    with httpx.stream(
        "GET", url, params={"access_token": other}, headers={"Last-Event-ID": "nope:1"}
    ) as response:
        assert '"resync":true' in _next_event(response.iter_lines())[1]


def _next_event(lines: Iterator[str]) -> tuple[str, str]:
    name, data = "", ""
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and name:
            return name, data
    raise AssertionError("the stream ended")


def test_time_filter_is_applied_by_the_server(server: DevServer, page: Page) -> None:
    run_id = server.submit(chain())
    _log_in_at(page, server.base_url, server.admin_token)
    expect(page.locator(f'tr[data-run-id="{run_id}"]')).to_be_visible()
    with page.expect_request(re.compile(r"/api/v1/runs\?.*since=\d+")) as asked:
        page.locator("#f-from").fill(
            (datetime.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
        )
        page.locator("#f-from").dispatch_event("change")
    assert "since=" in asked.value.url
    expect(page.locator("#runs-status")).to_have_text("No runs match.")
    page.locator("#f-from").fill((datetime.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"))
    page.locator("#f-from").dispatch_event("change")
    expect(page.locator(f'tr[data-run-id="{run_id}"]')).to_be_visible()
    page.locator("#f-from").fill("")
    page.locator("#f-from").dispatch_event("change")
    with server.client() as client:
        bad = client.get("/api/v1/runs", params={"since": "last tuesday"})
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert bad.json()["errors"][0]["path"] == "/query/since"
        iso = client.get("/api/v1/runs", params={"until": "2000-01-01T00:00:00Z"})
        assert iso.status_code == 200
        assert iso.json()["items"] == []


def test_a_read_model_behind_the_stream_does_not_undo_the_run_status(
    server: DevServer, page: Page
) -> None:
    """The page fetches the run again when a patch is applied; a read model that lags
    (here: every fetch says "running") must not undo the end the stream told."""
    definition = {
        "name": "lagging",
        "edges": [],
        "nodes": [{"id": "plan", "type": "agent", "config": {"prompt": "plan the follow-up"}}],
        "output": "{plan: .nodes.plan.answer, notify: .nodes.notify}",
    }
    run_id = server.submit(definition)
    assert _until_finished(server, run_id) == "completed"
    fetched: list[str] = []

    def lagging(route: Route) -> None:
        response = route.fetch()
        run = response.json()
        run["status"] = "running"
        fetched.append(route.request.url)
        route.fulfill(response=response, json=run)

    page.route(re.compile(rf"/api/v1/runs/{run_id}$"), lagging)
    _log_in_at(page, server.base_url, server.admin_token)
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    expect(page.locator('#timeline li[data-type="RunCompleted"]')).to_have_count(1)
    deadline = time.monotonic() + 30
    while len(fetched) < 2:  # the page's own fetch, then the one PatchApplied made
        assert time.monotonic() < deadline, fetched
        page.wait_for_timeout(50)  # lets Playwright run the route handler meanwhile
    page.evaluate("() => new Promise((resolve) => setTimeout(resolve, 0))")
    expect(page.locator("#run-status .badge")).to_have_text("completed")
    expect(node(page, "notify")).to_have_attribute("data-state", "completed")


def test_an_unfinished_runs_duration_moves_on_without_events(server: DevServer, page: Page) -> None:
    """A run waiting for an approval gets no events, yet its Duration grows: in the runs
    list and in the waiting node's detail; a finished run's stays put."""
    waiting = server.submit(review("ticking"), {"title": "t"})
    finished = server.submit(chain())
    _log_in_at(page, server.base_url, server.admin_token)
    expect(page.locator(f'tr[data-run-id="{waiting}"] .badge')).to_have_text("waiting")
    expect(page.locator(f'tr[data-run-id="{finished}"] .badge')).to_have_text("completed")
    cell = page.locator(f'tr[data-run-id="{waiting}"] td').nth(5)
    done_cell = page.locator(f'tr[data-run-id="{finished}"] td').nth(5)
    first, done_first = cell.inner_text(), done_cell.inner_text()
    expect(cell).not_to_have_text(first, timeout=10_000)
    assert done_cell.inner_text() == done_first

    page.goto(f"{server.base_url}/#/runs/{waiting}")
    expect(node(page, "gate")).to_have_attribute("data-state", "waiting")
    node(page, "gate").click()
    shown = page.locator('#node-detail dd[data-fact="Duration"]')
    expect(shown).not_to_have_text("—")
    expect(shown).not_to_have_text(shown.inner_text(), timeout=10_000)
