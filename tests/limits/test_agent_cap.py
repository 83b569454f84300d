"""The agent cap counts every node that becomes an agent, whichever RFC 6902 operation
makes it one, base nodes of the submitted definition included (they used to be exempt:
retyping pending base nodes gave 15 agents in one run)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from aob.projections.workflow.materialize import PatchLimits, apply_patch, new_agents

PENDING = 8  # pending base nodes a patch could try to retype
BASE: dict[str, Any] = {
    "name": "cap",
    "nodes": [
        {"id": "first", "type": "agent", "config": {"prompt": "go"}},
        *({"id": f"n{i}", "type": "noop"} for i in range(PENDING)),
    ],
    "edges": [{"from": "first", "to": f"n{i}"} for i in range(PENDING)],
}
BASE_IDS = frozenset(n["id"] for n in BASE["nodes"])
LIMITS = PatchLimits(max_agent_spawns=5)
AGENT = {"id": "n0", "type": "agent", "config": {"prompt": "again"}}


def decide(operations: list[Any], so_far: int = 0, current: dict[str, Any] | None = None):
    return apply_patch(
        current or BASE,
        operations,
        frozen_nodes=frozenset({"first"}),
        base_node_ids=BASE_IDS,
        agents_added_so_far=so_far,
        limits=LIMITS,
    )


# One operation list per way of turning pending base node n0 (at /nodes/1) into an
# agent; each makes exactly one agent.
RETYPES: dict[str, list[dict[str, Any]]] = {
    "replace type": [{"op": "replace", "path": "/nodes/1/type", "value": "agent"}],
    "add type (an existing member: replaced)": [
        {"op": "add", "path": "/nodes/1/type", "value": "agent"}
    ],
    "remove then add the node": [
        {"op": "remove", "path": "/nodes/1"},
        {"op": "add", "path": "/nodes/1", "value": AGENT},
    ],
    "replace the whole node": [{"op": "replace", "path": "/nodes/1", "value": AGENT}],
    "copy the agent's type": [{"op": "copy", "from": "/nodes/0/type", "path": "/nodes/1/type"}],
    "move a type in from a spare field": [
        {"op": "add", "path": "/nodes/1/spare", "value": "agent"},
        {"op": "move", "from": "/nodes/1/spare", "path": "/nodes/1/type"},
    ],
    "test, then replace": [
        {"op": "test", "path": "/nodes/1/type", "value": "noop"},
        {"op": "replace", "path": "/nodes/1/type", "value": "agent"},
    ],
    "copy a whole agent over it, then rename": [
        {"op": "remove", "path": "/nodes/1"},
        {"op": "copy", "from": "/nodes/0", "path": "/nodes/1"},
        {"op": "replace", "path": "/nodes/1/id", "value": "n0"},
    ],
}


@pytest.mark.parametrize("operations", RETYPES.values(), ids=RETYPES.keys())
def test_every_operation_that_makes_a_base_node_an_agent_is_a_spawn(operations):
    allowed = decide(operations, so_far=4)
    assert allowed.ok, allowed.problems
    assert allowed.added_agents == 1
    refused = decide(operations, so_far=5)
    assert not refused.ok
    assert [p.path for p in refused.problems] == ["/nodes"]
    assert "agent spawn limit" in refused.problems[0].message
    assert "n0" in refused.problems[0].message


def test_retyping_every_pending_base_node_at_once_is_capped():
    retype_all = [
        {"op": "replace", "path": f"/nodes/{i + 1}/type", "value": "agent"} for i in range(PENDING)
    ]
    refused = decide(retype_all)
    assert not refused.ok
    assert "makes 8 node(s) agents" in refused.problems[0].message
    assert decide(retype_all[:5]).added_agents == 5


def test_retyping_in_steps_is_capped_across_patches():
    """The fold adds each patch's spawns to the run's count: 5, then no more."""
    current, so_far = copy.deepcopy(BASE), 0
    for i in range(PENDING):
        outcome = decide(
            [{"op": "replace", "path": f"/nodes/{i + 1}/type", "value": "agent"}], so_far, current
        )
        if not outcome.ok:
            break
        current, so_far = outcome.definition, so_far + outcome.added_agents
    assert so_far == 5
    assert sum(n["type"] == "agent" for n in current["nodes"]) == 6  # first + 5


def test_agents_that_stay_agents_are_not_spawns():
    current = decide(RETYPES["replace the whole node"]).definition
    assert current is not None
    edit = [{"op": "replace", "path": "/nodes/1/config/prompt", "value": "rephrased"}]
    assert decide(edit, so_far=5, current=current).ok
    assert new_agents(BASE, BASE) == []


def test_a_node_that_stops_being_an_agent_frees_nothing():
    """Counting is of spawns (monotonic), not of agents present: retyping an agent
    away and back is two changes, the second a spawn."""
    current = decide([{"op": "replace", "path": "/nodes/1/type", "value": "agent"}]).definition
    assert current is not None
    away = [{"op": "replace", "path": "/nodes/1/type", "value": "noop"}]
    back = decide(away, so_far=1, current=current).definition
    assert back is not None
    again = decide([{"op": "replace", "path": "/nodes/1/type", "value": "agent"}], 5, back)
    assert not again.ok


def test_patch_size_bounds_stop_copy_chains():
    """A copy chain doubles the document each step: stopped at the size limit."""
    grow = [{"op": "add", "path": "/blob", "value": ["x" * 1000]}]
    grow += [{"op": "copy", "from": "/blob", "path": "/blob/-"} for _ in range(40)]
    outcome = apply_patch(
        BASE,
        grow,
        frozen_nodes=frozenset(),
        base_node_ids=BASE_IDS,
        agents_added_so_far=0,
        limits=PatchLimits(max_operations=100, max_document_bytes=64 * 1024),
    )
    assert not outcome.ok
    assert "document size" in outcome.problems[0].message
    too_many = [{"op": "test", "path": "/name", "value": "cap"}] * 101
    outcome = apply_patch(
        BASE, too_many, frozen_nodes=frozenset(), base_node_ids=BASE_IDS, agents_added_so_far=0
    )
    assert "operation count: 101 operations > limit 100" in outcome.problems[0].message
