"""The console's compare view (compare.js) in Chromium: a fork beside its parent, opened
from the fork's page ("Compare with parent") and from two runs picked in the runs list."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page, expect

from tests.console.live import DevServer
from tests.console.test_console import log_in
from tests.fanout.live import eventually
from tests.fork.workflows import FORKABLE

PATCH = [{"op": "replace", "path": "/nodes/2/config/expr", "value": ".nodes.b.k + 100"}]


def _finished(server: DevServer, run_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        with server.client() as client:
            run: dict[str, Any] = client.get(f"/api/v1/runs/{run_id}").json()
        return run if run["status"] in ("completed", "failed", "cancelled") else None

    return eventually(done, f"run {run_id} finished")


def _parent_and_fork(server: DevServer) -> tuple[str, str]:
    parent = server.submit(FORKABLE, {"x": 1})
    _finished(server, parent)
    with server.client() as client:
        events = client.get(f"/api/v1/runs/{parent}/events").json()["items"]
        body = {
            "from_event": events[-1]["offset"],  # after it completed: b is carried over
            "inputs_patch": {"x": 5},
            "definition_patch": PATCH,
            "reason": "what if",
        }
        response = client.post(f"/api/v1/runs/{parent}/replay", json=body)
        assert response.status_code == 202, response.text
        fork_id = str(response.json()["run_id"])
    assert _finished(server, fork_id)["output"] == [101, 10]
    return parent, fork_id


def _shows_the_comparison(page: Page, parent: str, fork_id: str) -> None:
    expect(page.get_by_role("heading", name="Compare runs")).to_be_visible()
    expect(page.locator("#compare-verdict")).to_have_text("The runs differ.")
    expect(page.locator("#compare-a")).to_contain_text(parent)
    expect(page.locator("#compare-b .fork-of")).to_contain_text(f"forked from {parent}")
    expect(page.locator("#compare-b .fork-of")).to_contain_text("reason: what if")
    definition = page.locator("#compare-definition")
    expect(definition.locator(".diff-del")).to_contain_text("expr: .nodes.b.k + 1")
    expect(definition.locator(".diff-add")).to_contain_text("expr: .nodes.b.k + 100")
    expect(page.locator("#compare-inputs .diff-add")).to_contain_text('"x": 5')
    rows = page.locator("#compare-nodes tbody tr")
    expect(rows).to_have_count(5)
    node_a = page.locator('#compare-nodes tr[data-node-id="a"]')
    expect(node_a).to_contain_text("differs")
    b_row = page.locator('#compare-nodes tr[data-node-id="b"]')
    expect(b_row.locator("td").nth(2)).to_contain_text("carried over")
    expect(b_row.locator("td").nth(3)).to_have_text("same")
    d_output = page.locator('details.output-diff[data-node-id="d"] pre')
    expect(d_output.locator(".diff-del")).to_have_text("-2\n")
    expect(d_output.locator(".diff-add")).to_have_text("+10\n")


def test_compare_a_fork_with_its_parent(server: DevServer, page: Page, shot: Any) -> None:
    parent, fork_id = _parent_and_fork(server)
    log_in(page, server)
    page.goto(f"{server.base_url}/#/runs/{fork_id}")
    page.get_by_role("link", name="Compare with parent").click()
    expect(page).to_have_url(f"{server.base_url}/#/compare/{parent}/{fork_id}")
    _shows_the_comparison(page, parent, fork_id)
    shot(page, "12-compare")

    page.goto(f"{server.base_url}/#/runs/{parent}")  # not a fork: nothing to compare with
    expect(page.locator("#run-status")).to_contain_text("completed")
    expect(page.locator("#replay")).to_be_visible()
    expect(page.locator("#compare-parent")).to_have_count(0)


def test_compare_two_runs_picked_in_the_list(server: DevServer, page: Page) -> None:
    parent, fork_id = _parent_and_fork(server)
    log_in(page, server)
    button = page.locator("#compare-picked")
    expect(button).to_be_disabled()
    page.get_by_label(f"Pick {parent} to compare").check()
    expect(button).to_be_disabled()
    page.get_by_label(f"Pick {fork_id} to compare").check()
    expect(button).to_be_enabled()
    button.click()
    expect(page).to_have_url(f"{server.base_url}/#/compare/{parent}/{fork_id}")
    _shows_the_comparison(page, parent, fork_id)
