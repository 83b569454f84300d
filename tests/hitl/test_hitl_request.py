"""Rendering an approval request (placeholders run in the jq sandbox), and who may decide."""

from __future__ import annotations

import pytest

from aob.events.types import ApprovalDecided, Event, NodeCompleted, NodeFailed, NodeScheduled
from aob.workers.hitl import node_outcome, refusal
from aob.workers.hitl.request import RenderError, approval_request, render

CONTEXT = {"inputs": {"who": "kim"}, "nodes": {"quote": {"total": 42.5, "lines": [1, 2]}}}


async def test_a_single_placeholder_keeps_the_value_type_and_text_gets_json():
    template = {
        "total": "{{ .nodes.quote.total }}",
        "lines": "{{.nodes.quote.lines}}",
        "text": "{{ .inputs.who }} owes {{ .nodes.quote.total }} for {{ .nodes.quote.lines }}",
        "plain": ["no placeholders", 3, None, True],
    }
    assert await render(template, CONTEXT) == {
        "total": 42.5,
        "lines": [1, 2],
        "text": "kim owes 42.5 for [1,2]",
        "plain": ["no placeholders", 3, None, True],
    }


async def test_a_failing_placeholder_names_itself():
    with pytest.raises(RenderError, match=r"placeholder \{\{ \.inputs\.who \| error \}\}"):
        await render("x {{ .inputs.who | error }}", CONTEXT)


async def test_a_runaway_placeholder_fails_on_its_cpu_budget():
    with pytest.raises(RenderError, match=r"jq CPU budget exceeded .*AOB_JQ_CPU_MS"):
        await render({"m": "x {{ def f: f; f }}"}, CONTEXT)


async def test_the_request_carries_names_roles_deadline_and_a_default_message():
    config = {"approvers": ["ann"], "roles": ["ops"], "timeout_ms": 250}
    task = NodeScheduled("r", "gate", "hitl", 0, 1, config, CONTEXT)
    request = await approval_request(task, "a1", requested_at=1_000)
    assert (request.message, request.payload) == ("Approve gate?", None)
    assert request.approvers == ["ann", "role:ops"]
    assert request.deadline == 1_250


@pytest.mark.parametrize(
    ("approvers", "actor", "roles", "allowed"),
    [
        ([], "anyone", [], True),
        (["ann"], "ann", [], True),
        (["ann"], "bob", ["ann"], False),
        (["role:ops"], "bob", ["ops"], True),
        (["ann", "role:ops"], "bob", ["dev"], False),
        ([], "system:timeout", [], False),
    ],
)
def test_who_may_decide(approvers, actor, roles, allowed):
    assert (refusal(approvers, actor, roles) is None) is allowed


def _decided(decision: str, by: str) -> Event:
    return Event("d1", "r", 9_000, ApprovalDecided("r", "a1", decision, by, "c"))


APPROVAL = {"approval_id": "a1", "run_id": "r", "node_id": "gate", "iteration": 0, "attempt": 1}


def test_a_decision_completes_the_node_with_who_when_and_why():
    outcome = node_outcome(APPROVAL, _decided("approve", "ann"))
    assert isinstance(outcome, NodeCompleted)
    assert outcome.output == {
        "decision": "approve",
        "decided_by": "ann",
        "comments": "c",
        "decided_at": 9_000,
        "approval_id": "a1",
        "timed_out": False,
        "won": "approval",
        "votes": [],
        "signal": None,
    }
    rejected = node_outcome(APPROVAL, _decided("reject", "system:timeout"))
    assert isinstance(rejected, NodeCompleted)
    assert (rejected.output["decision"], rejected.output["timed_out"]) == ("reject", True)


def test_a_timeout_meaning_fail_fails_the_node_for_good():
    outcome = node_outcome(APPROVAL, _decided("fail", "system:timeout"))
    assert isinstance(outcome, NodeFailed)
    assert outcome.retryable is False
    assert "no decision by its deadline" in outcome.error
