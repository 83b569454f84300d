"""The mix of workflows the scaled cluster runs, a client that submits them over every
live API instance, and a reader of `aob.runs` straight from Kafka."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from aob.events.codec import decode
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.prefixed import PrefixedEventLog
from aob.events.types import (
    RUNS_TOPIC,
    TERMINAL_RUN_EVENTS,
    Event,
    NodeCompleted,
    NodeScheduled,
    NodeStarted,
    RunSubmitted,
    TimerFired,
)

TERMINAL = ("completed", "failed", "cancelled")
ACTOR = {"X-Aob-Actor": "alice"}


def join_flow() -> dict[str, Any]:
    """Fan out to two transforms, join them."""
    return {
        "name": "join",
        "nodes": [
            {"id": "a", "type": "transform", "config": {"expr": ".inputs.n"}},
            {"id": "b", "type": "transform", "config": {"expr": ".nodes.a + 1"}},
            {"id": "c", "type": "transform", "config": {"expr": ".nodes.a * 2"}},
            {"id": "d", "type": "transform", "config": {"expr": ".nodes.b + .nodes.c"}},
        ],
        "edges": [
            {"from": "a", "to": "b"},
            {"from": "a", "to": "c"},
            {"from": "b", "to": "d"},
            {"from": "c", "to": "d"},
        ],
        "output": ".nodes.d",
    }


def http_flow(base_url: str) -> dict[str, Any]:
    """A POST to the counting server between two transforms."""
    return {
        "name": "call",
        "nodes": [
            {"id": "prep", "type": "transform", "config": {"expr": ".inputs.n"}},
            {
                "id": "call",
                "type": "http",
                "config": {
                    "method": "POST",
                    "url": base_url + "/count/{{ .inputs.n }}",
                    "body": {"n": "{{ .nodes.prep }}"},
                },
            },
            {"id": "done", "type": "transform", "config": {"expr": ".nodes.prep"}},
        ],
        "edges": [{"from": "prep", "to": "call"}, {"from": "call", "to": "done"}],
        "output": ".nodes.done",
    }


def retry_flow(base_url: str) -> dict[str, Any]:
    """An http node whose first attempt outlasts its timeout; the next one answers.

    Its attempts span ~35 s: a task of a partition whose worker was killed waits for
    the group to notice (the 10 s session timeout) and the rebalance, and a broker
    restart holds tasks back as long; attempts that all time out meanwhile would
    fail the run although nothing was lost."""
    return {
        "name": "retry",
        "nodes": [
            {
                "id": "slow",
                "type": "http",
                "config": {"url": base_url + "/slow/{{ .inputs.token }}"},
                "timeout_ms": 1000,
                "retry": {"max_attempts": 5, "initial_backoff_ms": 2000},
            },
            {"id": "after", "type": "transform", "config": {"expr": ".inputs.n"}},
        ],
        "edges": [{"from": "slow", "to": "after"}],
        "output": ".nodes.after",
    }


def approval_flow(timeout_ms: int) -> dict[str, Any]:
    """A person's approval with a deadline (reject when it passes)."""
    return {
        "name": "approval",
        "nodes": [
            {"id": "draft", "type": "noop", "config": {"output": "text"}},
            {
                "id": "gate",
                "type": "hitl",
                "config": {"message": "Publish?", "timeout_ms": timeout_ms},
            },
            {"id": "publish", "type": "transform", "config": {"expr": ".nodes.gate.decision"}},
        ],
        "edges": [{"from": "draft", "to": "gate"}, {"from": "gate", "to": "publish"}],
        "output": ".nodes.publish",
    }


KINDS = ("join", "http", "retry", "approved", "timed_out")


@dataclass
class Submitted:
    run_id: str
    kind: str
    api: str  # the instance that accepted it
    expected: Any  # its output once completed


@dataclass
class Load:
    """Submits the mix round robin over the live API instances and decides approvals
    through an instance other than the one that accepted the run."""

    apis: Callable[[], dict[str, str]]  # live API instances: name -> base URL
    counting_url: str
    runs: list[Submitted] = field(default_factory=list)
    _kinds: itertools.cycle[str] = field(default_factory=lambda: itertools.cycle(KINDS))
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def submit(self, count: int) -> None:
        for _ in range(count):
            n = len(self.runs)
            kind = next(self._kinds)
            body = self._body(kind, n)
            api, response = self._post("/api/v1/runs", body, status=202)
            # A rejection (the deadline's) routes away from `publish`: no output.
            expected = {"join": 3 * n + 1, "approved": "approve", "timed_out": None}
            self.runs.append(Submitted(response["run_id"], kind, api, expected.get(kind, n)))

    def _body(self, kind: str, n: int) -> dict[str, Any]:
        inputs = {"n": n, "token": uuid.uuid4().hex}
        definition = {
            "join": join_flow(),
            "http": http_flow(self.counting_url),
            "retry": retry_flow(self.counting_url),
            "approved": approval_flow(timeout_ms=120_000),
            "timed_out": approval_flow(timeout_ms=1500),
        }[kind]
        return {"definition": definition, "inputs": inputs}

    def _post(
        self, path: str, body: dict[str, Any], *, status: int, avoid: str | None = None
    ) -> tuple[str, Any]:
        """POST through the next live instance (not `avoid` when another lives), trying
        the next one while instances are down or the log is away (a broker restart)."""
        deadline = time.monotonic() + 60
        last = ""
        while time.monotonic() < deadline:
            live = self.apis()
            names = [n for n in sorted(live) if n != avoid] or sorted(live)
            if names:
                name = names[next(self._turn) % len(names)]
                try:
                    response = httpx.post(live[name] + path, json=body, headers=ACTOR, timeout=10)
                except httpx.TransportError as error:
                    last = f"{name}: {error!r}"
                else:
                    if response.status_code == status:
                        return name, response.json()
                    last = f"{name}: {response.status_code} {response.text[:300]}"
                    if response.status_code < 500:
                        raise AssertionError(f"POST {path} refused: {last}")
            time.sleep(0.1)
        raise AssertionError(f"POST {path} not accepted within 60 s; last: {last}")

    def _get(self, path: str, **params: Any) -> Any:
        deadline = time.monotonic() + 60
        last = ""
        while time.monotonic() < deadline:
            for name, url in sorted(self.apis().items()):
                try:
                    response = httpx.get(url + path, params=params, timeout=10)
                except httpx.TransportError as error:
                    last = f"{name}: {error!r}"
                    continue
                if response.status_code == 200:
                    return response.json()
                last = f"{name}: {response.status_code} {response.text[:300]}"
            time.sleep(0.1)
        raise AssertionError(f"GET {path} failed for 60 s; last: {last}")

    def decide_pending(self) -> int:
        """Approve the pending approvals of the "approved" runs, each through an API
        instance other than the one that accepted its run; how many."""
        wanted = {r.run_id: r for r in self.runs if r.kind == "approved"}
        decided = 0
        for approval in self._get("/api/v1/approvals")["items"]:
            run = wanted.get(approval["run_id"])
            if run is None:
                continue
            path = f"/api/v1/approvals/{approval['approval_id']}/decide"
            self._post(path, {"decision": "approve"}, status=200, avoid=run.api)
            decided += 1
        return decided

    def statuses(self) -> dict[str, dict[str, Any]]:
        """Every submitted run's state, from the read models."""
        found = {}
        for run in self.runs:
            found[run.run_id] = self._get(f"/api/v1/runs/{run.run_id}")
        return found

    def finished(self) -> int:
        listed = self._get("/api/v1/runs", limit=500)["items"]
        return sum(1 for r in listed if r["status"] in TERMINAL)

    def wait_finished(self, at_least: int, timeout: float) -> None:
        """Until `at_least` runs are over, deciding approvals meanwhile."""
        deadline = time.monotonic() + timeout
        while self.finished() < at_least:
            self.decide_pending()
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {at_least} runs finished in {timeout} s")
            time.sleep(0.2)

    def wait_all(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Every run's final state, deciding approvals until they are all over."""
        deadline = time.monotonic() + timeout
        while True:
            self.decide_pending()
            states = self.statuses()
            open_runs = {k: v["status"] for k, v in states.items() if v["status"] not in TERMINAL}
            if not open_runs:
                return states
            if time.monotonic() > deadline:
                raise AssertionError(f"runs not over after {timeout} s: {open_runs}")
            time.sleep(0.2)


# --- the log, read straight from Kafka --------------------------------------------------


@dataclass
class RunsLog:
    events: list[Event]

    def duplicate_ids(self) -> dict[str, int]:
        counts = Counter(e.event_id for e in self.events)
        return {event_id: n for event_id, n in counts.items() if n > 1}

    def copies(self, event_id: str) -> list[str]:
        """Each copy of an event: who appended it when, and what it says (for messages)."""
        return [
            f"{e.actor} at {e.occurred_at}: {e.payload!r:.300}"
            for e in self.events
            if e.event_id == event_id
        ]

    def type_of(self, event_id: str) -> str:
        return next(type(e.payload).__name__ for e in self.events if e.event_id == event_id)

    def submitted(self) -> set[str]:
        return {e.key for e in self.events if isinstance(e.payload, RunSubmitted)}

    def terminal_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for event in self.events:
            if isinstance(event.payload, TERMINAL_RUN_EVENTS):
                counts[event.key] += 1
        return counts

    def answered_before_timeout(self, run_id: str, node_id: str) -> bool:
        """Whether `node_id`'s first attempt completed before its timeout fired."""
        timer = f"{run_id}:{node_id}:0:1:timeout"
        for event in self.events:
            payload = event.payload
            if event.key != run_id:
                continue
            if isinstance(payload, TimerFired) and payload.timer_id == timer:
                return False
            if isinstance(payload, NodeCompleted) and (
                payload.node_id,
                payload.iteration,
                payload.attempt,
            ) == (node_id, 0, 1):
                return True
        return False

    def attempt_events(self, task: NodeScheduled) -> set[str]:
        """The types of the events that name `task`'s attempt (started, completed...)."""
        attempt = (task.run_id, task.node_id, task.iteration, task.attempt)
        return {
            type(e.payload).__name__
            for e in self.events
            if isinstance(e.payload, (NodeStarted, NodeCompleted))
            and (e.payload.run_id, e.payload.node_id, e.payload.iteration, e.payload.attempt)
            == attempt
        }

    def scheduled(self, node_type: str) -> list[NodeScheduled]:
        return [
            e.payload
            for e in self.events
            if isinstance(e.payload, NodeScheduled) and e.payload.node_type == node_type
        ]


def read_runs(bootstrap: str, prefix: str) -> RunsLog:
    """Every committed event of `aob.runs`, partition by partition, from offset 0."""
    return RunsLog(asyncio.run(_read_runs(bootstrap, prefix)))


async def _read_runs(bootstrap: str, prefix: str) -> list[Event]:
    kafka = await KafkaEventLog.open(bootstrap, client_id="aob-test-reader")
    event_log = PrefixedEventLog(kafka, prefix)
    events: list[Event] = []
    try:
        for partition, end in sorted((await event_log.end_offsets(RUNS_TOPIC)).items()):
            offset = 0
            while offset < end:
                records = await event_log.read(RUNS_TOPIC, partition, offset, 1000)
                if not records:
                    break
                events += [decode(r.value) for r in records if r.offset < end]
                offset = records[-1].offset + 1
    finally:
        await event_log.close()
    return events
