"""The read models' JSON text (`views.dumps`): the value the standard library's compact
JSON would write, in its very text unless floats are in it (orjson writes 0.00001 where
json.dumps writes 1e-05), and stores compared by that value, not the text."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aob.projections.readmodels.queries import dump_row
from aob.projections.readmodels.views import dumps, loads


def stdlib(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(has_float(v) for v in value.values())
    return isinstance(value, list) and any(has_float(v) for v in value)


@given(json_values)
def test_dumps_writes_the_value_json_dumps_writes(value: Any) -> None:
    assert loads(dumps(value)) == json.loads(stdlib(value))
    if not has_float(value):
        assert dumps(value) == stdlib(value)


def test_a_row_dumps_by_the_value_of_its_json_not_its_text() -> None:
    written_before = {"run_id": "r", "output": '{"p":1e-05}', "status": "completed"}
    written_now = {"run_id": "r", "output": '{"p":0.00001}', "status": "completed"}
    assert dump_row(written_before) == dump_row(written_now) == ("r", {"p": 1e-05}, "completed")
    assert dump_row({"output": '{"p":2e-05}'}) != dump_row({"output": '{"p":0.00001}'})


@pytest.mark.parametrize(
    "value",
    [
        {"big": 2**64, "n": -(2**70)},  # past orjson's 64 bits
        "lone \ud800 surrogate",  # not UTF-8: orjson refuses it
        {1: "int key", None: "null key"},
        ("a", "tuple"),
        {"é": "ü", "quote": '"', "control": "\x00\x1f"},
    ],
)
def test_values_orjson_refuses_or_writes_otherwise_come_out_as_json_dumps_writes(
    value: Any,
) -> None:
    assert dumps(value) == stdlib(value)
