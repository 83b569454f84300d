"""A quorum approval in the console (issue 16): two approvers vote from the inbox in
Chromium; after the first vote the card shows the progress and the run still waits,
after the second the run completes, live in the run's tab."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page, expect

from tests.console.live import DevServer
from tests.console.test_console import log_in, node


def quorum_gate() -> dict[str, Any]:
    return {
        "name": "quorum",
        "nodes": [
            {
                "id": "gate",
                "type": "hitl",
                "config": {"message": "Pay the invoice?", "approvers": ["ann", "bob"], "quorum": 2},
            },
            {"id": "pay", "type": "transform", "config": {"expr": '"paid"'}},
        ],
        "edges": [{"from": "gate", "to": "pay"}],
    }


def vote(browser: Any, server: DevServer, name: str, run_id: str, comment: str) -> Page:
    inbox: Page = browser.new_context().new_page()
    log_in(inbox, server, server.token(name, ["approver"]))
    inbox.goto(f"{server.base_url}/#/approvals")
    card = inbox.locator(f'article.approval[data-run-id="{run_id}"]')
    expect(card.locator(".quorum")).to_be_visible()
    card.get_by_label("Comment").fill(comment)
    card.get_by_role("button", name="Approve").click()
    return inbox


def test_a_quorum_approval_completes_as_two_users_vote(
    server: DevServer, page: Page, browser: Any, shot
) -> None:
    run_id = server.submit(quorum_gate())
    log_in(page, server)
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    expect(node(page, "gate")).to_have_attribute("data-state", "waiting")

    ann = vote(browser, server, "ann", run_id, "invoice matches")
    notice = ann.locator("#approvals-notice")
    expect(notice).to_contain_text("Vote recorded: 1 of 2 approvals (ann)")
    card = ann.locator(f'article.approval[data-run-id="{run_id}"]')
    expect(card.locator(".quorum")).to_contain_text("1 of 2 approvals (ann)")
    shot(ann, "11-approvals-quorum-one-vote")
    expect(node(page, "gate")).to_have_attribute("data-state", "waiting")
    ann.context.close()

    bob = vote(browser, server, "bob", run_id, "budget ok")
    decided = bob.locator(f'#past tr:has(a:text("{run_id}"))')
    expect(decided).to_contain_text("system:quorum")
    expect(decided).to_contain_text("ann, bob")
    shot(bob, "12-approvals-quorum-decided")
    bob.context.close()

    expect(node(page, "pay")).to_have_attribute("data-state", "completed")
    expect(page.locator("#run-status .badge")).to_have_text("completed")
