"""The read models' JSON text (`views.dumps`): what the standard library's compact JSON
writes, whatever the value, so a projection reads the same however it was written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aob.projections.readmodels.views import dumps, loads


def stdlib(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
    | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_dumps_writes_what_json_dumps_writes(value: Any) -> None:
    assert loads(dumps(value)) == json.loads(stdlib(value))
    assert dumps(value) == stdlib(value) or "e-" in dumps(value)  # 1e-7 against 1e-07


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
