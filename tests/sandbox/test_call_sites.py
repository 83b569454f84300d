"""Worker call sites run tenant jq in the sandbox: a budget fails the node, naming it."""

from __future__ import annotations

import pytest

from aob.events.types import NodeScheduled
from aob.workers.agent.pipeline import PipelineError, run_pipeline
from aob.workers.builtin import run_transform
from aob.workers.hitl.request import RenderError, render
from aob.workers.host import NodeError
from aob.workers.sandbox import close_shared_sandbox


@pytest.fixture(autouse=True)
async def _close_shared():
    yield
    await close_shared_sandbox()


def _transform(config: dict[str, object]) -> NodeScheduled:
    return NodeScheduled("r", "t", "transform", 0, 1, config, {"inputs": {"x": [1, 2]}})


async def test_a_transform_runs_in_the_sandbox():
    assert await run_transform(_transform({"expr": ".inputs.x | add"})) == 3
    assert await run_transform(_transform({"expr": ".inputs.x[]", "all": True})) == [1, 2]


@pytest.mark.parametrize(
    ("expr", "setting"),
    [
        ("def f: f; f", "AOB_JQ_CPU_MS"),
        ('"x" * 1e9', "AOB_JQ_MEMORY_MB"),
        ('"x" * 2000000', "AOB_JQ_OUTPUT_BYTES"),
    ],
)
async def test_a_transform_over_budget_fails_for_good_naming_the_budget(expr, setting):
    with pytest.raises(NodeError, match=rf"jq: jq .* budget exceeded .*{setting}") as caught:
        await run_transform(_transform({"expr": expr}))
    assert caught.value.retryable is False


async def test_a_hitl_placeholder_over_budget_fails_the_render():
    with pytest.raises(RenderError, match="AOB_JQ_CPU_MS"):
        await render("{{ last(range(1e10)) }}", {})


async def test_pipeline_jq_steps_run_in_the_sandbox():
    rows = [{"n": 1}, {"n": 5}]
    assert await run_pipeline([{"op": "table_filter", "where": ".n > 2"}], rows) == [{"n": 5}]
    with pytest.raises(PipelineError, match=r"step 0 \(jq_transform\): jq CPU budget exceeded"):
        await run_pipeline([{"op": "jq_transform", "expr": "def f: f; f"}], None)
