"""A hitl message full of unclosed "{{" renders in linear time. The regex it used to
be scanned with rescanned the rest of the text from every "{{": on ~400 KB that is
~10^11 steps, minutes with the worker's loop blocked. The scan finds exactly the
placeholders the regex found (and the definition's validation compiled)."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import textwrap

import pytest

from aob.events.types import NodeScheduled
from aob.workers.hitl.request import approval_request, placeholder_spans

# The pattern the worker used, kept here as the reference for what a placeholder is.
REFERENCE = re.compile(r"\{\{((?:(?!\}\}).)*)\}\}", re.DOTALL)
HOSTILE_BYTES = 400_000  # under AOB_MAX_EVENT_BYTES: it fits in a NodeScheduled
# Far above the linear scan (milliseconds, plus starting Python) and far below the
# quadratic regex (minutes): scheduling noise on a shared box cannot cross it.
GENEROUS_BOUND_S = 30


@pytest.mark.parametrize("seed", range(20))
def test_the_scan_finds_what_the_reference_regex_finds(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        text = "".join(rng.choice("{}a. \n") for _ in range(rng.randint(0, 40)))
        expected = [match.span() for match in REFERENCE.finditer(text)]
        assert list(placeholder_spans(text)) == expected, repr(text)


def test_a_hostile_message_renders_within_a_generous_bound() -> None:
    """In a child process, so that a quadratic scan fails the test at the bound instead
    of holding the test run."""
    child = textwrap.dedent(f"""
        import asyncio
        from aob.events.types import NodeScheduled
        from aob.workers.hitl.request import approval_request

        message = "{{{{" * ({HOSTILE_BYTES} // 2)
        payload = {{"a": "{{{{x" * ({HOSTILE_BYTES} // 6), "b": "}}}}" + "{{{{" * 1000}}
        task = NodeScheduled("r", "gate", "hitl", 0, 1,
                             {{"message": message, "payload": payload}}, {{}})
        request = asyncio.run(approval_request(task, "a1", requested_at=0))
        assert request.message == message
        assert request.payload == payload
        print("rendered", len(request.message))
    """)
    done = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        timeout=GENEROUS_BOUND_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"rendered {HOSTILE_BYTES}"


async def test_placeholders_beside_a_hostile_tail_are_still_rendered() -> None:
    message = "{{ .inputs.who }} approves {{ .inputs.n + 1 }}? " + "{{" * 2000
    task = NodeScheduled(
        "r", "gate", "hitl", 0, 1, {"message": message}, {"inputs": {"who": "kim", "n": 1}}
    )
    request = await approval_request(task, "a1", requested_at=0)
    assert request.message == "kim approves 2? " + "{{" * 2000
