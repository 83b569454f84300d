"""The ten primitives of the fast lane, and step-by-step errors."""

from __future__ import annotations

from typing import Any

import pytest

from aob.workers.agent.pipeline import PRIMITIVES, PipelineError, run_pipeline
from aob.workers.agent.tools import corrected_example

ROWS = [
    {"id": 1, "team": "a", "score": 7, "note": "ticket T-12 open", "at": "2024-03-01T10:00:00Z"},
    {
        "id": 2,
        "team": "b",
        "score": 3,
        "note": "no ticket",
        "at": "Fri, 01 Mar 2024 12:00:00 +0100",
    },
    {"id": 3, "team": "a", "score": 9, "note": "T-7 and T-8", "at": 1709287200},
]


async def run(steps: list[dict[str, Any]], data: Any = ROWS) -> Any:
    return await run_pipeline(steps, data)


def test_there_are_ten_primitives():
    assert list(PRIMITIVES) == [
        "http_request",
        "table_sort",
        "table_filter",
        "table_select",
        "top_k",
        "groupby",
        "join",
        "jq_transform",
        "regex_extract",
        "parse_date",
    ]


async def test_sort_filter_select_top_k_compose():
    result = await run(
        [
            {"op": "table_filter", "field": "team", "cmp": "eq", "value": "a"},
            {"op": "table_sort", "by": "score", "descending": True},
            {"op": "table_select", "fields": {"who": "id", "points": "score"}},
            {"op": "top_k", "k": 1},
        ]
    )
    assert result == [{"who": 3, "points": 9}]
    assert await run([{"op": "table_filter", "where": '.score > 5 and .team == "a"'}]) == [
        ROWS[0],
        ROWS[2],
    ]
    assert [r["id"] for r in await run([{"op": "top_k", "k": 2, "by": "score"}])] == [3, 1]
    rows_with_gaps = [{"v": 2}, {}, {"v": 1}]
    assert await run([{"op": "table_sort", "by": "v"}], rows_with_gaps) == [{"v": 1}, {"v": 2}, {}]


async def test_groupby_aggregates():
    result = await run(
        [
            {
                "op": "groupby",
                "by": "team",
                "aggregations": {
                    "n": {"op": "count"},
                    "total": {"op": "sum", "field": "score"},
                    "mean": {"op": "avg", "field": "score"},
                    "best": {"op": "max", "field": "score"},
                    "ids": {"op": "list", "field": "id"},
                },
            }
        ]
    )
    assert result == [
        {"team": "a", "n": 2, "total": 16, "mean": 8.0, "best": 9, "ids": [1, 3]},
        {"team": "b", "n": 1, "total": 3, "mean": 3.0, "best": 3, "ids": [2]},
    ]
    assert await run([{"op": "groupby", "by": ["team"]}]) == [
        {"team": "a", "count": 2},
        {"team": "b", "count": 1},
    ]


async def test_join_with_a_saved_result_or_literal_rows():
    teams = [{"team": "a", "lead": "ann"}, {"team": "c", "lead": "cy"}]
    inner = await run(
        [
            {"op": "join", "rows": teams, "on": "team"},
            {"op": "table_select", "fields": ["id", "lead"]},
        ]
    )
    assert inner == [{"id": 1, "lead": "ann"}, {"id": 3, "lead": "ann"}]
    left = await run(
        [
            {"op": "join", "rows": teams, "on": {"left": "team", "right": "team"}, "how": "left"},
            {"op": "table_select", "fields": ["id", "lead"]},
        ]
    )
    assert left == [{"id": 1, "lead": "ann"}, {"id": 2, "lead": None}, {"id": 3, "lead": "ann"}]
    chained = await run(
        [
            {"op": "table_filter", "field": "score", "cmp": "gt", "value": 5, "as": "good"},
            {"op": "jq_transform", "expr": '[{id: 3, prize: "gold"}]'},
            {"op": "join", "with": "good", "on": "id"},
        ]
    )
    assert chained == [
        {"id": 3, "prize": "gold", **{k: v for k, v in ROWS[2].items() if k != "id"}}
    ]


async def test_regex_and_dates():
    extracted = await run(
        [
            {
                "op": "regex_extract",
                "field": "note",
                "pattern": r"T-(\d+)",
                "group": 1,
                "all": True,
                "into": "tickets",
            },
            {"op": "table_select", "fields": ["tickets"]},
        ]
    )
    assert extracted == [{"tickets": ["12"]}, {"tickets": []}, {"tickets": ["7", "8"]}]
    assert await run([{"op": "regex_extract", "pattern": r"\d+"}], "abc 42 x") == "42"
    dates = await run(
        [{"op": "parse_date", "field": "at"}, {"op": "table_select", "fields": ["at"]}]
    )
    assert dates == [
        {"at": "2024-03-01T10:00:00+00:00"},
        {"at": "2024-03-01T11:00:00+00:00"},
        {"at": "2024-03-01T10:00:00+00:00"},
    ]
    assert await run([{"op": "parse_date", "format": "%d/%m/%Y"}], "31/12/2023") == (
        "2023-12-31T00:00:00"
    )


async def test_jq_is_real_jq_and_sandboxed():
    assert await run([{"op": "jq_transform", "expr": "map(.score) | add"}]) == 19
    assert await run([{"op": "jq_transform", "expr": ".[] | .id", "all": True}]) == [1, 2, 3]
    with pytest.raises(PipelineError, match=r"step 0 \(jq_transform\): jq builtin not allowed"):
        await run([{"op": "jq_transform", "expr": "now"}])


@pytest.mark.parametrize(
    ("steps", "data", "message"),
    [
        ([], ROWS, "step 0 (pipeline): steps must be a non-empty array"),
        ([{"op": "explode"}], ROWS, "step 0 (explode): unknown op; use one of http_request"),
        (
            [{"op": "top_k", "k": 1}, {"op": "table_sort"}],
            ROWS,
            "step 1 (table_sort): missing parameter 'by'",
        ),
        (
            [{"op": "table_sort", "by": "id"}],
            {"not": "a table"},
            "step 0 (table_sort): input must be a table (an array of objects), got an object",
        ),
        (
            [{"op": "table_filter", "field": "note", "cmp": "gt", "value": 3}],
            ROWS,
            "step 0 (table_filter): row 0: cannot compare note='ticket T-12 open' with 3 (gt)",
        ),
        (
            [{"op": "join", "with": "nothing", "on": "id"}],
            ROWS,
            "step 0 (join): no saved result 'nothing' (saved so far: none",
        ),
        ([{"op": "regex_extract", "pattern": "("}], "x", "step 0 (regex_extract): invalid pattern"),
        (
            [{"op": "parse_date", "field": "note"}],
            ROWS,
            "step 0 (parse_date): row 0: cannot parse 'ticket T-12 open' as a date",
        ),
        (
            [
                {
                    "op": "groupby",
                    "by": "team",
                    "aggregations": {"x": {"op": "sum", "field": "note"}},
                }
            ],
            ROWS,
            "step 0 (groupby): aggregation 'x' (sum): field 'note' has non-numeric values",
        ),
        (
            [{"op": "http_request", "url": "https://example.com"}],
            None,
            "step 0 (http_request): outbound HTTP is not available to this agent",
        ),
        (
            [{"op": "top_k", "k": True}],
            ROWS,
            "step 0 (top_k): parameter 'k' must be an integer, got a boolean",
        ),
    ],
)
async def test_errors_name_the_step_and_why(steps, data, message):
    with pytest.raises(PipelineError) as caught:
        await run(steps, data)
    assert str(caught.value).startswith(message)


def test_corrected_example_fixes_the_usual_mistakes():
    definition = {
        "name": "w",
        "nodes": [{"id": "plan", "type": "agent"}, {"id": "mail", "type": "transform"}],
    }
    wrong = [
        {"operation": "add", "path": "nodes", "value": {"id": "mail"}},
        {"op": "add", "path": "/edges/-", "value": {"source": "plan", "target": "mail"}},
    ]
    assert corrected_example(wrong, definition, "plan") == [
        {
            "op": "add",
            "path": "/nodes/-",
            "value": {"id": "mail-2", "type": "transform", "config": {"expr": "."}},
        },
        {"op": "add", "path": "/edges", "value": [{"from": "plan", "to": "mail-2"}]},
    ]


def test_corrected_example_falls_back_to_the_usual_patch():
    definition = {"name": "w", "nodes": [{"id": "plan"}], "edges": []}
    right_shape = [{"op": "remove", "path": "/nodes/0"}]  # nothing to fix in its shape
    assert corrected_example(right_shape, definition, "plan") == [
        {
            "op": "add",
            "path": "/nodes/-",
            "value": {"id": "plan-next", "type": "transform", "config": {"expr": '.nodes["plan"]'}},
        },
        {"op": "add", "path": "/edges/-", "value": {"from": "plan", "to": "plan-next"}},
    ]
