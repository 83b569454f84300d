"""LLM usage in the read models, on every engine (SQLite, threaded, Postgres): rows per
usage event, run and tenant sums (period, exclusions), budgets as submitted."""

from __future__ import annotations

from aob.events.types import RUNS_TOPIC, AgentUsageRecorded, Event, PatchApplied, RunSubmitted
from aob.projections.readmodels import Position
from aob.projections.usage.summary import run_usage

BUDGET = {"max_cost_usd": 0.5, "on_exceeded": "approval"}


def _usage(
    run: str, node: str, tokens: int, cost: int | None, tenant: str | None
) -> AgentUsageRecorded:
    return AgentUsageRecorded(
        run, node, 0, 1, "m", 1, tokens - 5, 5, tokens, tenant=tenant, cost_nano_usd=cost
    )


def _seed(store) -> None:
    events = [
        Event(
            "s1",
            "r1",
            10,
            RunSubmitted("r1", {"nodes": [], "budget": BUDGET}, {}, [], tenant="acme"),
        ),
        Event("s2", "r2", 10, RunSubmitted("r2", {"nodes": []}, {}, [], tenant="globex")),
        Event("u1", "r1", 100, _usage("r1", "a", 100, 1_000, "acme")),
        Event("u2", "r1", 200, _usage("r1", "b", 50, None, "acme")),  # an unpriced model
        Event("u3", "r2", 300, _usage("r2", "a", 70, 7, "globex")),
        Event("u4", "r1", 400, _usage("r1", "a", 10, 3, None)),  # before events named tenants
        Event("p1", "r1", 500, PatchApplied("r1", "p", 1)),
    ]
    store.apply([(Position(RUNS_TOPIC, 0, n), e) for n, e in enumerate(events)])
    store.apply([(Position(RUNS_TOPIC, 0, 2), events[2])])  # applied again: no change


def test_run_and_tenant_spend(store):
    _seed(store)
    assert store.spend(run_id="r1") == {"tokens": 160, "cost_nano": 1_003, "unpriced_tokens": 50}
    # The tenant of an event recorded without one is its run's.
    assert store.spend(tenant="acme")["tokens"] == 160
    assert store.spend(tenant="acme", since=200)["tokens"] == 60
    assert store.spend(tenant="acme", excluding=["u1", "u4"])["tokens"] == 50
    assert store.spend(tenant="globex") == {"tokens": 70, "cost_nano": 7, "unpriced_tokens": 0}
    assert store.spend(tenant="nobody") == {"tokens": 0, "cost_nano": 0, "unpriced_tokens": 0}
    assert store.usage_recorded(["u1", "u3", "never"]) == {"u1", "u3"}
    assert store.usage_recorded([]) == set()


def test_budgets_as_submitted_and_usage_per_node(store):
    _seed(store)
    assert store.run_budget("r1")["budget"] == BUDGET
    assert store.run_budget("r2") == {"run_id": "r2", "tenant": "globex", "budget": None}
    assert store.run_budget("unknown") is None
    summary = run_usage(store.run_usage("r1"))
    a, b = summary["nodes"]
    assert (a["node_id"], a["attempts"], a["total_tokens"], a["cost_nano_usd"]) == (
        "a",
        2,
        110,
        1_003,
    )
    assert (b["cost_usd"], b["unpriced_tokens"]) == (None, 50)
    assert summary["total"]["total_tokens"] == 160
