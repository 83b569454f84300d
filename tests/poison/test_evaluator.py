"""The expression evaluator sets poison aside too: conditions of other runs go on."""

from __future__ import annotations

from pathlib import Path

from aob.events.types import EXPRESSIONS_TOPIC
from tests.poison.harness import GARBAGE, engine

CONDITIONAL = {
    "name": "conditional",
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expr": ".inputs.x"}},
        {"id": "b", "type": "transform", "config": {"expr": ".nodes.a + 1"}},
    ],
    "edges": [{"from": "a", "to": "b", "when": ".nodes.a > 1"}],
    "output": ".nodes.b",
}


async def test_an_undecodable_expression_request_is_set_aside(tmp_path: Path) -> None:
    async with engine(tmp_path) as aob:
        poisoned = await aob.waiting_run()
        record = await aob.append(EXPRESSIONS_TOPIC, poisoned, GARBAGE)
        run = await aob.finished(await aob.submit(CONDITIONAL, {"x": 41}))
        assert (run["status"], run["output"]) == ("completed", 42), run
        (letter,) = await aob.letters_of(record)
        assert letter["service"] == "aob-evaluator"
        failed = await aob.finished(poisoned)
        assert failed["status"] == "failed"
        assert "set aside as dead letter" in failed["error"]
        assert await aob.committed("aob-evaluator", record) > record.offset
