"""Patches on a running workflow: every acceptance rule, and purity."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aob.projections.workflow.definition import validate_definition
from aob.projections.workflow.materialize import (
    PatchLimits,
    PatchReplayError,
    apply_patch,
    json_equal,
    materialize,
)

BASE: dict[str, Any] = {
    "name": "review",
    "nodes": [
        {"id": "draft", "type": "agent", "config": {"prompt": "write"}},
        {"id": "check", "type": "transform", "config": {"expr": ".nodes.draft", "strict": True}},
        {"id": "publish", "type": "http", "config": {"url": "https://x"}},
    ],
    "edges": [{"from": "draft", "to": "check"}, {"from": "check", "to": "publish"}],
}
BASE_IDS = frozenset({"draft", "check", "publish"})


DEFAULT_LIMITS = PatchLimits()


def patch(operations, *, frozen=("draft",), so_far=0, limits=DEFAULT_LIMITS, current=None):
    return apply_patch(
        BASE if current is None else current,
        operations,
        frozen_nodes=frozenset(frozen),
        base_node_ids=BASE_IDS,
        agents_added_so_far=so_far,
        limits=limits,
    )


def add_node(node_id, node_type="agent", **extra):
    return {"op": "add", "path": "/nodes/-", "value": {"id": node_id, "type": node_type, **extra}}


def add_edge(source, target, **extra):
    return {"op": "add", "path": "/edges/-", "value": {"from": source, "to": target, **extra}}


def only_problem(outcome):
    assert not outcome.ok
    assert outcome.definition is None
    assert len(outcome.problems) == 1, outcome.problems
    return outcome.problems[0]


# --- accepted patches ----------------------------------------------------------------


def test_new_node_reachable_from_a_frozen_node_is_accepted():
    outcome = patch([add_node("critic"), add_edge("draft", "critic"), add_edge("critic", "check")])
    assert outcome.ok
    assert outcome.problems == ()
    assert outcome.added_nodes == ("critic",)
    assert outcome.added_agents == 1
    assert outcome.definition is not None
    assert outcome.definition["edges"][-1] == {"from": "critic", "to": "check"}
    assert validate_definition(outcome.definition) == []


def test_unstarted_nodes_may_change():
    outcome = patch([{"op": "replace", "path": "/nodes/2/config/url", "value": "https://y"}])
    assert outcome.ok
    assert outcome.definition["nodes"][2]["config"]["url"] == "https://y"
    assert outcome.added_nodes == ()
    assert outcome.added_agents == 0


def test_empty_patch_is_accepted_as_a_copy():
    outcome = patch([])
    assert outcome.ok
    assert outcome.definition == BASE
    assert outcome.definition is not BASE


def test_spelling_out_a_frozen_nodes_defaults_is_not_a_change():
    outcome = patch(
        [
            {"op": "add", "path": "/nodes/0/join", "value": "all"},
            {"op": "add", "path": "/nodes/0/retry", "value": {"max_attempts": 1}},
        ]
    )
    assert outcome.ok


# --- operation shape and count -------------------------------------------------------


def test_operations_must_be_a_list():
    problem = only_problem(patch({"op": "add"}))
    assert problem.path == ""
    assert "operation shape" in problem.message


@pytest.mark.parametrize(
    ("op", "words"),
    [
        ("add", "must be an object"),
        ({"op": "append", "path": "/name", "value": "x"}, "'op' must be one of"),
        ({"path": "/name", "value": "x"}, "'op' must be one of"),
        ({"op": "add", "value": "x"}, "'path' must be a JSON Pointer"),
        ({"op": "add", "path": "name", "value": "x"}, "'path' must be a JSON Pointer"),
        ({"op": "add", "path": "/a~2b", "value": "x"}, "'path' must be a JSON Pointer"),
        ({"op": "replace", "path": "/name"}, "needs a 'value'"),
        ({"op": "test", "path": "/name"}, "needs a 'value'"),
        ({"op": "copy", "path": "/name"}, "needs a 'from'"),
        ({"op": "move", "path": "/nodes/0/x", "from": "/nodes"}, "own children"),
    ],
)
def test_malformed_operation_is_reported_at_its_index(op, words):
    good = {"op": "test", "path": "/name", "value": "review"}
    problem = only_problem(patch([good, op]))
    assert problem.path == "/1"
    assert "operation shape" in problem.message
    assert words in problem.message


def test_every_malformed_operation_is_reported():
    outcome = patch([1, {"op": "add", "path": "/name", "value": "x"}, {"op": "nope"}])
    assert [p.path for p in outcome.problems] == ["/0", "/2"]


def test_operation_count_limit():
    ops = [{"op": "test", "path": "/name", "value": "review"}] * 3
    assert patch(ops, limits=PatchLimits(max_operations=3)).ok
    problem = only_problem(patch(ops, limits=PatchLimits(max_operations=2)))
    assert problem.path == ""
    assert "operation count: 3 operations > limit 2" in problem.message


def test_default_operation_limit_is_100():
    ops = [{"op": "test", "path": "/name", "value": "review"}]
    assert patch(ops * 100).ok
    assert "operation count" in only_problem(patch(ops * 101)).message


def test_operation_that_does_not_apply_is_reported_at_its_index():
    problem = only_problem(patch([add_node("x"), {"op": "remove", "path": "/nodes/9"}]))
    assert problem.path == "/1"
    assert problem.message.startswith("operation failed: remove /nodes/9")


# --- test operations -----------------------------------------------------------------


def test_test_op_true_is_not_1():
    problem = only_problem(patch([{"op": "test", "path": "/nodes/1/config/strict", "value": 1}]))
    assert problem.path == "/0"
    assert problem.message.startswith("test failed")
    assert patch([{"op": "test", "path": "/nodes/1/config/strict", "value": True}]).ok


def test_test_op_compares_numbers_by_value_and_objects_by_keys():
    current = copy.deepcopy(BASE)
    current["nodes"][2]["config"] = {"url": "https://x", "weight": 1, "tags": [1.5, None]}
    ops = [
        {
            "op": "test",
            "path": "/nodes/2/config",
            "value": {"tags": [1.5, None], "weight": 1.0, "url": "https://x"},
        }
    ]
    assert patch(ops, current=current).ok


def test_test_op_on_a_missing_path_fails():
    problem = only_problem(patch([{"op": "test", "path": "/nodes/7/id", "value": "x"}]))
    assert problem.path == "/0"
    assert problem.message.startswith("test failed")


def test_a_failed_test_stops_the_patch():
    ops = [{"op": "test", "path": "/name", "value": "other"}, add_node("x")]
    assert [p.path for p in patch(ops).problems] == ["/0"]


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (True, 1, False),
        (False, 0, False),
        (None, False, False),
        (1, 1.0, True),
        ("1", 1, False),
        ([1, [True]], [1.0, [True]], True),
        ([1, 2], [2, 1], False),
        ({"a": 1, "b": [2]}, {"b": [2.0], "a": 1}, True),
        ({"a": 1}, {"a": 1, "b": None}, False),
        ({"a": True}, {"a": 1}, False),
        ([], {}, False),
    ],
)
def test_json_equal(a, b, equal):
    assert json_equal(a, b) is equal
    assert json_equal(b, a) is equal


# --- size -----------------------------------------------------------------------------


def test_copy_chain_bomb_fails_fast():
    # Each copy appends the array to itself: without the per-operation check the
    # document would reach 2**60 elements.
    ops = [{"op": "add", "path": "/nodes/2/config/blob", "value": ["x" * 64]}]
    ops += [{"op": "copy", "from": "/nodes/2/config/blob", "path": "/nodes/2/config/blob/-"}] * 60
    started = time.process_time()  # CPU: the work done, whatever the machine's load
    outcome = patch(ops, limits=PatchLimits(max_operations=100))
    elapsed = time.process_time() - started
    problem = only_problem(outcome)
    assert "document size" in problem.message
    assert int(problem.path[1:]) < 20  # stopped as soon as it passed 1 MiB
    assert elapsed < 5


def test_document_size_limit_applies_per_operation():
    limits = PatchLimits(max_document_bytes=2000)
    big = {"op": "add", "path": "/description", "value": "x" * 1500}
    assert patch([big], limits=limits).ok
    problem = only_problem(patch([big, big | {"path": "/nodes/2/config/y"}], limits=limits))
    assert problem.path == "/1"
    assert "document size" in problem.message


# --- the result must be a valid definition --------------------------------------------


def test_new_undeclared_cycle_is_refused():
    problem = only_problem(patch([add_edge("publish", "check")]))
    assert problem.path == "/edges/2"
    assert problem.message.startswith("invalid result: undeclared cycle")


def test_declared_loop_among_unstarted_nodes_is_accepted():
    assert patch([add_edge("publish", "check", loop={"max_iterations": 2})]).ok


def test_invalid_result_reports_paths_in_the_result():
    outcome = patch([add_node("bad id"), add_edge("check", "ghost")])
    assert [p.path for p in outcome.problems] == ["/nodes/3/id", "/edges/2/to"]
    assert all(p.message.startswith("invalid result:") for p in outcome.problems)


def test_replacing_the_whole_document_with_garbage_is_refused():
    outcome = patch([{"op": "replace", "path": "", "value": [1, 2]}])
    assert not outcome.ok
    assert outcome.problems[0].message.startswith("invalid result")


# --- frozen nodes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "field"),
    [
        ({"op": "replace", "path": "/nodes/0/config/prompt", "value": "other"}, "config"),
        ({"op": "replace", "path": "/nodes/0/type", "value": "http"}, "type"),
        ({"op": "add", "path": "/nodes/0/retry", "value": {"max_attempts": 2}}, "retry"),
        ({"op": "add", "path": "/nodes/0/timeout_ms", "value": 10}, "timeout_ms"),
        ({"op": "add", "path": "/nodes/0/join", "value": "any"}, "join"),
    ],
)
def test_frozen_node_rewrite_is_refused(op, field):
    problem = only_problem(patch([op]))
    assert problem.path == "/nodes/0"
    assert problem.message == f"frozen node: 'draft' has started and cannot change ({field})"


def test_frozen_node_config_true_to_1_is_a_change():
    op = {"op": "replace", "path": "/nodes/1/config/strict", "value": 1}
    assert patch([op], frozen=()).ok
    assert "cannot change (config)" in only_problem(patch([op], frozen=("check",))).message


def test_frozen_node_may_move_in_the_list():
    ops = [{"op": "move", "from": "/nodes/0", "path": "/nodes/-"}]
    assert patch(ops).ok


def test_frozen_node_removal_is_refused():
    ops = [{"op": "remove", "path": "/edges/0"}, {"op": "remove", "path": "/nodes/0"}]
    problem = only_problem(patch(ops))
    assert problem.path == "/nodes"
    assert problem.message == "frozen node: 'draft' has started and cannot be removed"


def test_frozen_node_incoming_edge_added_is_refused():
    outcome = patch([add_node("scout", "http"), add_edge("scout", "check")], frozen=("check",))
    problem = only_problem(outcome)
    assert problem.path == "/edges"
    assert problem.message == (
        "frozen incoming edges: 'check' has started, its incoming edges cannot change "
        "(added 'scout' -> 'check')"
    )


def test_frozen_node_incoming_edge_removed_is_refused():
    problem = only_problem(patch([{"op": "remove", "path": "/edges/0"}], frozen=("check",)))
    assert "removed 'draft' -> 'check'" in problem.message


def test_frozen_node_incoming_edge_condition_change_is_refused():
    op = {"op": "add", "path": "/edges/0/when", "value": ".ok"}
    problem = only_problem(patch([op], frozen=("check",)))
    assert "frozen incoming edges" in problem.message


def test_loop_edge_into_a_frozen_node_is_refused():
    problem = only_problem(patch([add_edge("publish", "draft", loop={"max_iterations": 2})]))
    assert "frozen incoming edges: 'draft'" in problem.message


def test_edges_out_of_a_frozen_node_may_change():
    assert patch([{"op": "add", "path": "/edges/0/when", "value": ".ok"}], frozen=("draft",)).ok


# --- agent spawns ----------------------------------------------------------------------


def test_sixth_agent_is_refused():
    assert patch([add_node("a5")], so_far=4).ok
    problem = only_problem(patch([add_node("a6")], so_far=5))
    assert problem.path == "/nodes"
    assert problem.message.startswith("agent spawn limit")
    assert "a6" in problem.message


def test_agents_of_one_patch_are_counted_together():
    outcome = patch([add_node("a"), add_node("b"), add_node("c")], so_far=3)
    assert "makes 3 node(s) agents" in only_problem(outcome).message
    assert patch([add_node("a"), add_node("b")], so_far=3).added_agents == 2


def test_non_agent_nodes_are_not_spawns():
    outcome = patch([add_node("h", "http")], so_far=5)
    assert outcome.ok
    assert outcome.added_agents == 0


def test_retyping_a_node_to_agent_is_a_spawn():
    current = patch([add_node("helper", "http"), add_edge("check", "helper")]).definition
    op = {"op": "replace", "path": "/nodes/3/type", "value": "agent"}
    assert "agent spawn limit" in only_problem(patch([op], so_far=5, current=current)).message
    assert patch([op], so_far=4, current=current).added_agents == 1


def test_base_agent_readded_is_not_a_spawn():
    current = copy.deepcopy(BASE)
    current["nodes"].append({"id": "spare", "type": "agent"})
    ops = [{"op": "replace", "path": "/nodes/0/config/prompt", "value": "again"}]
    outcome = patch(ops, frozen=(), so_far=5, current=current)
    assert outcome.ok
    assert outcome.added_agents == 0


def test_agent_spawn_limit_is_configurable():
    assert not patch([add_node("a")], limits=PatchLimits(max_agent_spawns=0)).ok


# --- purity and replay -----------------------------------------------------------------


def test_inputs_are_never_mutated_nor_aliased():
    current = copy.deepcopy(BASE)
    ops = [
        add_node("n", "http", config={"k": [1]}),
        {"op": "add", "path": "/nodes/3/config/k/-", "value": 2},
        add_edge("check", "n"),
    ]
    ops_before, current_before = copy.deepcopy(ops), copy.deepcopy(current)
    outcome = patch(ops, current=current)
    assert outcome.ok
    assert current == current_before
    assert ops == ops_before
    outcome.definition["nodes"][3]["config"]["k"].append(3)
    assert ops == ops_before


def test_materialize_replays_accepted_patches_in_order():
    first = [add_node("critic"), add_edge("draft", "critic")]
    second = [{"op": "add", "path": "/nodes/3/config", "value": {"prompt": "be harsh"}}]
    one = patch(first)
    two = patch(second, current=one.definition, so_far=one.added_agents)
    base = copy.deepcopy(BASE)
    assert materialize(base, [first, second]) == two.definition
    assert base == BASE


def test_materialize_without_patches_is_a_copy():
    result = materialize(BASE, [])
    assert result == BASE
    assert result is not BASE


def test_materialize_refuses_a_patch_that_no_longer_applies():
    with pytest.raises(PatchReplayError, match="patch 1"):
        materialize(BASE, [[], [{"op": "remove", "path": "/nodes/9"}]])


# --- arbitrary operations ---------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
pointers = st.sampled_from(
    [
        "",
        "/name",
        "/nodes",
        "/nodes/-",
        "/nodes/0",
        "/nodes/1/config",
        "/nodes/1/config/expr",
        "/nodes/2/id",
        "/nodes/01",
        "/nodes/9",
        "/edges",
        "/edges/0",
        "/edges/-",
        "/edges/1/to",
        "/edges/0/loop",
        "/name/0",
        "/x~1y",
        "/a/b/c",
    ]
) | st.text(max_size=8)
node_values = st.fixed_dictionaries(
    {"id": st.sampled_from(["draft", "check", "new", "x"]), "type": st.sampled_from(["agent", "t"])}
)
edge_values = st.fixed_dictionaries(
    {"from": st.sampled_from(["draft", "check", "new"]), "to": st.sampled_from(["check", "new"])}
)
any_value = json_values | node_values | edge_values


def well_formed(kind):
    members = {"op": st.just(kind), "path": pointers}
    if kind in ("add", "replace", "test"):
        members["value"] = any_value
    if kind in ("move", "copy"):
        members["from"] = pointers
    return st.fixed_dictionaries(members)


malformed = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "remove", "copy", "test", "bad"]) | json_values},
    optional={"path": pointers | json_values, "from": pointers, "value": any_value},
)
operations = (
    st.sampled_from(["add", "remove", "replace", "move", "copy", "test"]).flatmap(well_formed)
    | malformed
    | json_values
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(operations, max_size=6),
    st.sets(st.sampled_from(["draft", "check", "publish", "ghost"])),
    st.integers(0, 6),
)
def test_random_operations_never_raise_nor_mutate(ops, frozen, so_far):
    current = copy.deepcopy(BASE)
    ops_before = copy.deepcopy(ops)
    outcome = patch(ops, frozen=frozen, so_far=so_far, current=current)
    assert current == BASE
    assert ops == ops_before
    assert outcome.ok == (outcome.definition is not None)
    if outcome.ok:
        assert validate_definition(outcome.definition) == []
        assert so_far + outcome.added_agents <= 5
        assert not (frozen - {"ghost"}) - {n["id"] for n in outcome.definition["nodes"]}
        assert materialize(BASE, [ops]) == outcome.definition
    else:
        assert outcome.problems


def test_an_edge_target_of_the_wrong_type_is_a_problem_not_a_crash():
    ops = [{"op": "add", "path": "/edges/-", "value": {"from": "draft", "to": ["check"]}}]
    outcome = patch(ops)
    assert not outcome.ok
    assert outcome.problems
