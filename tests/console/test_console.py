"""The web console in a real browser (Debian's chromium) against a live dev server."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import Page, expect

from tests.console.live import DevServer

XSS = '<img src=x onerror="window.__xss=1">'


def review(name: str = "review") -> dict[str, Any]:
    """draft -> gate (an approval whose message quotes the inputs) -> publish."""
    return {
        "name": name,
        "nodes": [
            {"id": "draft", "type": "noop", "config": {"output": {"title": "Q3"}}},
            {
                "id": "gate",
                "type": "hitl",
                "config": {
                    "message": "Publish {{ .inputs.title }}?",
                    "payload": {"title": "{{ .inputs.title }}"},
                    "allow_self_approval": True,  # the admin submits and decides
                },
            },
            {"id": "publish", "type": "transform", "config": {"expr": '"published"'}},
        ],
        "edges": [{"from": "draft", "to": "gate"}, {"from": "gate", "to": "publish"}],
    }


def chain() -> dict[str, Any]:
    return {
        "name": "chain",
        "nodes": [
            {"id": "first", "type": "transform", "config": {"expr": "1"}},
            {"id": "second", "type": "transform", "config": {"expr": ".nodes.first + 1"}},
        ],
        "edges": [{"from": "first", "to": "second"}],
        "output": ".nodes.second",
    }


def node(page: Page, node_id: str) -> Any:
    return page.locator(f'svg.dag g.node[data-node-id="{node_id}"]')


def log_in(page: Page, server: DevServer, token: str | None = None) -> None:
    """Through the login form (the dev server's one-click URL is tested on its own)."""
    page.goto(f"{server.base_url}/")
    page.get_by_label("API token").fill(token or server.admin_token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()


def test_root_is_the_console_and_assets_ship_locally(server: DevServer, page: Page, shot) -> None:
    outside: list[str] = []
    page.on(
        "request", lambda r: None if r.url.startswith(server.base_url) else outside.append(r.url)
    )
    page.goto(f"{server.base_url}/")
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    shot(page, "01-login")
    page.goto(f"{server.base_url}/docs")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    shot(page, "09-swagger-ui")
    page.goto(f"{server.base_url}/redoc")
    expect(page.get_by_text("Submit a run").first).to_be_attached()
    # ReDoc's footer links its vendor's logo (an image, not needed to render); blob:
    # URLs are its own worker.
    fetched = [u for u in outside if not u.startswith("blob:") and not u.endswith("logo-mini.svg")]
    assert fetched == [], f"fetched from outside the server: {fetched}"


def test_one_click_dev_login_then_log_out(server: DevServer, page: Page) -> None:
    page.goto(server.console_url)
    expect(page.locator("#who")).to_contain_text("local-admin")
    assert "token" not in page.url  # dropped from the address bar (and history)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()


def test_a_bad_token_is_refused_with_the_reason(server: DevServer, page: Page) -> None:
    page.goto(f"{server.base_url}/")
    page.get_by_label("API token").fill("aob_000000000000_" + "x" * 43)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-status")).to_contain_text("unknown API token")


def test_runs_list_filters_and_pages(server: DevServer, page: Page, shot) -> None:
    ids = [server.submit(chain()) for _ in range(3)]
    waiting = server.submit(review("list-waiting"), {"title": "x"})
    log_in(page, server)
    expect(page.locator(f'tr[data-run-id="{waiting}"] .badge')).to_have_text("waiting")
    for run_id in ids:  # statuses update live, without reloading
        expect(page.locator(f'tr[data-run-id="{run_id}"] .badge')).to_have_text("completed")
    shot(page, "02-runs")
    page.locator("#f-status").select_option("waiting")
    expect(page.locator(f'tr[data-run-id="{ids[0]}"]')).to_have_count(0)
    expect(page.locator(f'tr[data-run-id="{waiting}"]')).to_be_visible()
    page.locator("#f-status").select_option("")
    page.locator(f'tr[data-run-id="{waiting}"] a').click()
    expect(page).to_have_url(re.compile(f"#/runs/{waiting}$"))


def test_approval_run_turns_green_live_when_approved_from_the_inbox(
    server: DevServer, page: Page, browser: Any, shot
) -> None:
    run_id = server.submit(review(), {"title": XSS})
    log_in(page, server)
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    expect(node(page, "draft")).to_have_attribute("data-state", "completed")
    expect(node(page, "gate")).to_have_attribute("data-state", "waiting")
    expect(page.locator("#run-status .badge")).to_have_text("waiting")
    shot(page, "03-run-waiting")

    # The inbox in another tab; the run's tab keeps its stream open.
    inbox = browser.new_context().new_page()
    inbox.goto(server.console_url)
    inbox.get_by_role("link", name="Approvals").click()
    card = inbox.locator(f'article.approval[data-run-id="{run_id}"]')
    expect(card.locator(".message")).to_have_text(f"Publish {XSS}?")  # as text, not HTML
    assert card.locator("img").count() == 0
    assert inbox.evaluate("window.__xss") is None
    expect(card).to_contain_text("anyone who may approve")
    shot(inbox, "04-approvals-pending")
    card.get_by_label("Comment").fill("ship it")
    card.get_by_role("button", name="Approve").click()
    expect(inbox.locator("#approvals-notice")).to_contain_text("Approved")
    decided = inbox.locator(f'#past tr:has(a:text("{run_id}"))')
    expect(decided).to_contain_text("local-admin")
    expect(decided).to_contain_text("ship it")
    shot(inbox, "05-approvals-decided")
    inbox.context.close()

    for node_id in ("draft", "gate", "publish"):  # live, from the stream
        expect(node(page, node_id)).to_have_attribute("data-state", "completed")
    expect(page.locator("#run-status .badge")).to_have_text("completed")
    expect(page.locator('svg.dag path.edge[data-from="gate"]')).to_have_attribute(
        "data-state", "taken"
    )
    node(page, "publish").click()
    expect(page.locator("#node-detail")).to_contain_text('"published"')
    expect(page.locator("#node-detail")).to_contain_text("Attempts")
    shot(page, "06-run-completed")


def test_agent_patch_is_reviewed_and_its_node_appears(server: DevServer, page: Page, shot) -> None:
    definition = {
        "name": "reviewed",
        "patch_policy": "review",
        "edges": [],
        "nodes": [{"id": "plan", "type": "agent", "config": {"prompt": "plan the follow-up"}}],
        "output": "{plan: .nodes.plan.answer, notify: .nodes.notify}",
    }
    run_id = server.submit(definition)
    log_in(page, server)
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    patch = page.locator("article.patch")
    expect(patch.get_by_role("button", name="Approve patch")).to_be_visible(timeout=60_000)
    expect(page.locator("#patch-policy")).to_contain_text("review")
    expect(patch.locator("pre.diff .diff-add").first).to_contain_text("notify")
    expect(node(page, "notify")).to_have_count(0)
    node(page, "plan").click()
    expect(page.locator("#node-detail")).to_contain_text("Token usage")
    expect(page.locator("#node-detail")).to_contain_text("Tool calls")
    expect(page.locator("#node-detail")).to_contain_text("awaiting_review")
    shot(page, "07-patch-review")
    patch.get_by_label("Reason").fill("looks safe")
    patch.get_by_role("button", name="Approve patch").click()
    added = node(page, "notify")
    expect(added).to_have_attribute("data-state", "completed")
    expect(added).to_have_attribute("data-patch", re.compile(".+"))
    expect(added).to_have_class(re.compile("patched"))
    expect(page.locator("#run-status .badge")).to_have_text("completed")
    # The patch's label fits in its node's box.
    text, box = added.evaluate(
        "(g) => [g.querySelector('.node-type').getBBox().width,"
        " Number(g.querySelector('rect').getAttribute('width'))]"
    )
    assert text + 2 * 10 <= box + 0.5, (text, box)
    expect(added.locator(".node-type")).to_contain_text("patch")
    # Every tool call the agent made (as its usage event records it: arguments, result,
    # time), and its patch_workflow call with what became of the patch.
    node(page, "plan").click()
    call = page.locator('#tool-calls li.tool-call[data-tool="patch_workflow"]')
    expect(call).to_have_count(1)
    expect(call.locator(".tool-arguments")).to_contain_text("notify ops")
    expect(call.locator(".tool-result")).to_contain_text("patch_id")
    expect(call).to_contain_text(" ms")
    patch = page.locator("#tool-calls li.patch-call")
    expect(patch).to_have_count(1)
    expect(patch.locator(".patch-outcome")).to_contain_text("applied")
    expect(patch).to_contain_text('"path": "/nodes/-"')
    expect(patch).to_contain_text("settled after")
    expect(page.locator("#agent-usage")).to_contain_text("Total tokens")
    # The run's LLM usage per agent node and in total (no price configured: cost unknown).
    expect(page.locator("#run-usage-table tr", has_text="plan")).to_contain_text("unknown")
    expect(page.locator("#run-usage-table")).to_contain_text("Total")
    shot(page, "08-patch-applied")


def test_fork_from_a_timeline_event(server: DevServer, page: Page) -> None:
    run_id = server.submit(chain())
    log_in(page, server)
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    expect(page.locator("#run-status .badge")).to_have_text("completed")
    completed_first = page.locator('#timeline li[data-type="NodeCompleted"][data-node="first"]')
    offset = completed_first.get_attribute("data-offset")
    completed_first.get_by_role("button", name="Fork from here").click()
    expect(page).not_to_have_url(re.compile(f"#/runs/{run_id}$"))
    forked = page.url.rsplit("/", 1)[1]
    expect(page.locator("#run-status .badge")).to_have_text("completed")
    expect(node(page, "second")).to_have_attribute("data-state", "completed")
    with server.client() as client:
        run = client.get(f"/api/v1/runs/{forked}").json()
        events = client.get(f"/api/v1/runs/{forked}/events").json()["items"]
    assert run["output"] == 2
    (submitted,) = [e for e in events if e["type"] == "RunSubmitted"]
    assert submitted["data"]["checkpoint"]["from_event"] == int(offset or -1)
    # `first` was seeded from the fork point, not run again.
    assert [e["data"]["node_id"] for e in events if e["type"] == "NodeScheduled"] == ["second"]


def test_a_viewer_sees_no_action_buttons(server: DevServer, page: Page, shot) -> None:
    run_id = server.submit(review("viewer"), {"title": "v"})
    viewer = server.token("vera", ["viewer"])
    log_in(page, server, viewer)
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    expect(node(page, "gate")).to_have_attribute("data-state", "waiting")
    expect(page.locator("#timeline li").first).to_be_visible()
    for name in ("Cancel run", "Fork from here", "Replay from the start"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    page.goto(f"{server.base_url}/#/approvals")
    card = page.locator(f'article.approval[data-run-id="{run_id}"]')
    expect(card).to_contain_text("vera may not decide approvals")
    expect(page.get_by_role("button", name=re.compile("^(Approve|Reject)"))).to_have_count(0)
    shot(page, "10-viewer-approvals")
    page.goto(f"{server.base_url}/#/workflows")
    expect(page.locator("#yaml")).to_be_visible()
    expect(page.get_by_role("button", name="Save as a new version")).to_have_count(0)


def test_workflows_validate_live_and_submit_by_tag(server: DevServer, page: Page, shot) -> None:
    with server.client() as client:
        created = client.post(
            "/api/v1/workflows", json={"definition": chain(), "tag": "chain-prod"}
        )
        assert created.status_code == 201, created.text
        workflow_id = created.json()["workflow_id"]
    log_in(page, server)
    page.goto(f"{server.base_url}/#/workflows/{workflow_id}")
    expect(page.locator("#validation")).to_contain_text("valid")
    expect(node(page, "second")).to_be_visible()
    page.locator("#yaml").fill(
        "name: broken\nnodes:\n  - {id: a, type: transform}\nedges:\n  - {from: a, to: nowhere}\n"
    )
    expect(page.locator("#validation")).to_contain_text("/edges/0/to")
    expect(page.locator("#validation")).to_contain_text("no such node")
    shot(page, "11-workflow-invalid")
    page.goto(f"{server.base_url}/#/workflows/{workflow_id}")
    expect(page.locator("#tags")).to_contain_text("chain-prod")
    page.locator("#submit-ref").select_option("tag:chain-prod")
    page.locator("#submit-inputs").fill('{"n": 1}')
    page.get_by_role("button", name="Submit run").click()
    expect(page.locator("#run-status .badge")).to_have_text("completed")
    shot(page, "12-workflow-run")


def test_health_page(server: DevServer, page: Page, shot) -> None:
    log_in(page, server)
    page.get_by_role("link", name="Health").click()
    expect(page.locator("#health-summary")).to_contain_text("Everything answers")
    expect(page.locator("main")).to_contain_text("read models")
    shot(page, "13-health")


def test_keyboard_reaches_the_main_actions(server: DevServer, page: Page) -> None:
    run_id = server.submit(review("keyboard"), {"title": "k"})
    page.goto(f"{server.base_url}/")
    page.keyboard.type(server.admin_token)  # the token field has the focus
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    expect(node(page, "gate")).to_have_attribute("data-state", "waiting")
    assert _tab_to(page, "#cancel")
    assert _tab_to(page, 'g.node[data-node-id="draft"]')
    page.keyboard.press("Enter")
    expect(page.locator("#node-detail")).to_contain_text("draft")
    page.goto(f"{server.base_url}/#/approvals")
    card = page.locator(f'article.approval[data-run-id="{run_id}"]')
    expect(card).to_be_visible()
    assert _tab_to(page, f'article.approval[data-run-id="{run_id}"] button.approve')


def _tab_to(page: Page, selector: str, limit: int = 80) -> bool:
    """Whether Tab presses alone move the focus onto `selector`."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement?.matches(s) ?? false", selector):
            return True
    return False


CONTRAST = """() => {
  const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const ratio = (a, b) => { const [x, y] = [lum(rgb(a)), lum(rgb(b))].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05); };
  const bg = (el) => { for (let e = el; e; e = e.parentElement) {
    const c = getComputedStyle(e).backgroundColor;
    if (!/rgba\\(.*, 0\\)$/.test(c) && c !== 'transparent') return c; }
    return 'rgb(255, 255, 255)'; };
  const out = {};
  const pairs = {body: 'main p, main td', nav: 'nav a', badge: '.badge', button: 'button',
                 primary: 'button.primary', muted: '.muted'};
  for (const [name, sel] of Object.entries(pairs)) {
    const el = document.querySelector(sel);
    if (el) out[name] = ratio(getComputedStyle(el).color, bg(el));
  }
  for (const el of document.querySelectorAll('svg.dag g.node')) {
    const text = getComputedStyle(el.querySelector('.node-id')).fill;
    const fill = getComputedStyle(el.querySelector('rect')).fill;
    out[`node-${el.dataset.state || 'pending'}`] = ratio(text, fill);
  }
  return out;
}"""


def test_text_contrast_is_readable(server: DevServer, page: Page) -> None:
    run_id = server.submit(review("contrast"), {"title": "c"})
    page.goto(f"{server.base_url}/")
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert page.evaluate(CONTRAST)["primary"] >= 4.5  # the login page's main button
    log_in(page, server)
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    expect(node(page, "gate")).to_have_attribute("data-state", "waiting")
    ratios = page.evaluate(CONTRAST)
    assert {
        "body",
        "nav",
        "badge",
        "button",
        "muted",
        "node-completed",
        "node-waiting",
        "node-pending",
    } <= set(ratios), ratios
    low = {name: round(r, 2) for name, r in ratios.items() if r < 4.5}  # WCAG AA
    assert not low, f"contrast under 4.5:1: {low}"
