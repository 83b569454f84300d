"""A quorum approval in the console (issue 16): two approvers vote from the inbox in
Chromium; after the first vote the card shows the progress and the run still waits,
after the second the run completes, live in the run's tab, whose node detail lists the
votes. The run view also shows an escalation and the signal that ended a wait."""

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

    # The run view's node detail: each vote (who, how, when, comment) and the decision.
    node(page, "gate").click()
    votes = page.locator("#approval-votes")
    expect(votes.locator('tr[data-voter="ann"]')).to_contain_text("approve")
    expect(votes.locator('tr[data-voter="ann"]')).to_contain_text("invoice matches")
    expect(votes.locator('tr[data-voter="bob"]')).to_contain_text("budget ok")
    expect(votes.locator('tr[data-voter="bob"] td').nth(2)).not_to_have_text("—")  # when
    expect(page.locator("#approval-decided")).to_have_text("Decided: approve by system:quorum")
    shot(page, "13-run-quorum-votes")


def test_the_run_view_shows_an_escalation_and_the_signal_that_ended_a_wait(
    server: DevServer, page: Page, shot
) -> None:
    gate = {
        "message": "Ship the order?",
        "approvers": ["ann"],
        "timeout_ms": 300,
        "escalation": [{"approvers": ["boss"]}],  # no deadline of its own: waits on
        "signals": ["shipped"],
    }
    run_id = server.submit(
        {
            "name": "signalled",
            "nodes": [
                {"id": "gate", "type": "hitl", "config": gate},
                {"id": "done", "type": "transform", "config": {"expr": '"done"'}},
            ],
            "edges": [{"from": "gate", "to": "done"}],
        }
    )
    log_in(page, server)
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    node(page, "gate").click()
    expect(page.locator("#approval-level")).to_have_text("Escalated to level 1: ann, boss")
    expect(page.locator("#approval-signal")).to_have_count(0)

    with server.client() as client:
        sent = client.post(f"/api/v1/runs/{run_id}/signals/shipped", json={"tracking": "T-1"})
        assert sent.status_code == 202, sent.text
    ended = page.locator("#approval-signal")
    expect(ended).to_contain_text("Wait ended by signal shipped sent by")
    expect(ended).to_contain_text('"tracking": "T-1"')
    expect(page.locator("#approval-decided")).to_have_text(
        "Decided: approve by system:signal:shipped"
    )
    expect(node(page, "done")).to_have_attribute("data-state", "completed")
    shot(page, "14-run-signal-ended-wait")
