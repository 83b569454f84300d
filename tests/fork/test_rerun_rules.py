"""Which completed nodes a fork's edits make run again (`aob.platform.replay`)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from aob.platform.problems import Problem
from aob.platform.replay import Edits, edited_inputs, merge_patch, rerun_nodes
from aob.projections.workflow.compiler import compile_workflow
from tests.fork.workflows import FORKABLE


def _patched(changes: dict[str, str]) -> dict[str, Any]:
    definition = copy.deepcopy(FORKABLE)
    for node in definition["nodes"]:
        if node["id"] in changes:
            node["config"]["expr"] = changes[node["id"]]
    return definition


def _rerun(after: dict[str, Any], *, inputs_changed: bool = False) -> set[str]:
    before = compile_workflow(FORKABLE)
    return set(rerun_nodes(before, compile_workflow(after), inputs_changed=inputs_changed))


def test_no_edit_reruns_nothing() -> None:
    assert _rerun(FORKABLE) == set()


def test_changed_inputs_rerun_what_reads_them_and_what_follows() -> None:
    assert _rerun(FORKABLE, inputs_changed=True) == {"a", "d", "j"}


def test_a_changed_node_reruns_with_what_follows_it() -> None:
    assert _rerun(_patched({"c": ".nodes.b.k + 100"})) == {"c", "j"}


def test_a_node_reading_a_rerun_output_reruns_without_an_edge() -> None:
    # b now reads d's output though no edge leads from d to b.
    assert _rerun(_patched({"b": "{k: (.nodes.d // 1)}"})) >= {"b", "c", "j"}
    reader = _patched({"c": ".nodes.d"})  # c reads d; d reruns when the inputs change
    assert "c" in _rerun(reader, inputs_changed=True)


def test_what_may_read_anything_reruns_when_anything_does() -> None:
    # `.` as a whole may reach the inputs: not simple enough to tell.
    whole = _patched({"b": "{k: (. | length)}"})
    assert {"b", "c"} <= _rerun(whole, inputs_changed=True)
    escaped = _patched({"b": '{k: ."\\u0069nputs"}'})  # spells inputs with an escape
    assert "b" in _rerun(escaped, inputs_changed=True)


def test_a_condition_reading_the_inputs_reruns_its_target() -> None:
    gated = copy.deepcopy(FORKABLE)
    gated["edges"][0]["when"] = ".inputs.go"
    after = compile_workflow(gated)
    assert {"c", "j"} <= set(rerun_nodes(after, after, inputs_changed=True))
    assert "b" not in rerun_nodes(after, after, inputs_changed=True)


def test_input_edits() -> None:
    assert merge_patch({"x": 1, "y": {"z": 1, "w": 2}}, {"y": {"z": None, "v": 3}}) == {
        "x": 1,
        "y": {"w": 2, "v": 3},
    }
    assert edited_inputs({"x": 1}, Edits(inputs={"y": 2}, replace_inputs=True)) == {"y": 2}
    patch = [{"op": "replace", "path": "/x", "value": 5}]
    assert edited_inputs({"x": 1}, Edits(inputs_patch=patch)) == {"x": 5}
    with pytest.raises(Problem) as refused:
        edited_inputs(
            {"x": 1}, Edits(inputs_patch=[patch[0], {"op": "test", "path": "/x", "value": True}])
        )
    assert refused.value.status == 422
    assert refused.value.extra["errors"][0]["path"] == "/inputs_patch/1"


def test_a_copy_chain_is_stopped_by_the_size_bound() -> None:
    doubling = [{"op": "add", "path": "/a", "value": "x" * 1024}] + [
        {"op": "copy", "from": "", "path": f"/c{i}"} for i in range(30)
    ]
    with pytest.raises(Problem, match="passes"):
        edited_inputs({}, Edits(inputs_patch=doubling))
