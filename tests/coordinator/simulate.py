"""A pure, deterministic stand-in for the workers and the timer service around the fold.

`Simulation` keeps one run's log the way the coordinator host does: an appended
event is folded, what the fold emits is appended after it (and folded in turn,
where it is recognised by id), and every event in the log is seen by the
"outside world": a `NodeScheduled` makes a worker answer according to a script,
a `TimerSet` makes the timer service fire at `fire_at`, an `ExpressionRequested`
makes the evaluator answer with the expression's verdict (or error). Those answers
wait in a
pending set; `step` delivers one (by default the earliest due, in the order they
arose), moving fake time forward to when it is due.

Chaos for property tests is optional and seeded: a random choice among pending
deliveries (any interleaving of concurrent answers and timers), at-least-once
workers (an answer appended again under a new event id) and duplicated log entries
(the same event, same id, appended again, as after a host crash).

Invariants are checked after every fold, so a broken one fails at the event that
broke it: the outstanding counter never goes negative and always equals the
number of node instances in an outstanding status.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aob.events.types import (
    TERMINAL_RUN_EVENTS,
    ApprovalDecided,
    ApprovalRequested,
    Event,
    ExpressionEvaluated,
    ExpressionRequested,
    Json,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeStarted,
    Payload,
    RunSubmitted,
    TimerFired,
    TimerSet,
)
from aob.projections.coordinator.fold import fold, replay
from aob.projections.coordinator.state import OUTSTANDING, RunState
from aob.projections.workflow.expressions import ExpressionError, evaluate

RUN_ID = "run-1"
KNOWN_TYPES = ("work", "transform", "noop", "http", "hitl", "agent")

P = TypeVar("P")
OutcomeKind = Literal["complete", "fail", "fatal", "hang"]


class _Echo:
    """The default output: names the instance that produced it."""

    def __repr__(self) -> str:
        return "ECHO"


ECHO: Any = _Echo()


@dataclass(frozen=True)
class Outcome:
    """What a worker does with one attempt of a node.

    `complete` answers `output` (ECHO: {"node", "iteration", "attempt"}); `fail`
    sends a retryable failure, `fatal` a non-retryable one; `hang` starts and never
    finishes, so only a timeout ends the attempt. The answer is due `duration_ms` after the
    worker picked the task up (after its `NodeStarted`, if `started`). A worker that
    `asks_approval` requests one ("<node>:<iteration>:<attempt>") once started, and
    unless it hangs, the approval is decided halfway through.
    """

    kind: OutcomeKind = "complete"
    output: Json = ECHO
    duration_ms: int = 1
    started: bool = True
    error: str = "boom"
    asks_approval: bool = False


def complete(output: Json = ECHO, *, duration_ms: int = 1) -> Outcome:
    return Outcome("complete", output, duration_ms)


def fail(error: str = "boom", *, duration_ms: int = 1) -> Outcome:
    return Outcome("fail", duration_ms=duration_ms, error=error)


def fatal(error: str = "bad request", *, duration_ms: int = 1) -> Outcome:
    return Outcome("fatal", duration_ms=duration_ms, error=error)


HANG = Outcome("hang")

Script = Callable[[NodeScheduled], Outcome]
ScriptSpec = Script | Mapping[str, Sequence[Outcome] | Outcome] | None


def scripted(spec: ScriptSpec) -> Script:
    """A script from a mapping node id -> outcome, or outcomes per attempt (the last
    one repeats); nodes not named complete with ECHO. A callable is used as is."""
    if callable(spec):
        return spec
    table = dict(spec or {})

    def script(task: NodeScheduled) -> Outcome:
        outcomes = table.get(task.node_id, complete())
        if isinstance(outcomes, Outcome):
            return outcomes
        return outcomes[min(task.attempt, len(outcomes)) - 1]

    return script


@dataclass(frozen=True)
class Chaos:
    """Seeded misbehaviour of the world around the fold (see the module docstring)."""

    seed: int
    shuffle: bool = True
    redeliver: float = 0.0  # chance a worker's answer is appended again, new id
    duplicate: float = 0.0  # chance a log entry is appended again, same id


@dataclass(order=True)
class Pending:
    """A delivery the world will make: a worker's answer or a fired timer."""

    due: int
    order: int
    payload: Payload = field(compare=False)
    event: Event | None = field(default=None, compare=False)  # a duplicate, id kept
    then: Outcome | None = field(default=None, compare=False)  # a worker's next answer


class InvariantBroken(AssertionError):
    """Raised at the fold call that broke an invariant of the run's state."""


class Simulation:
    """One run of `definition`, driven to its end by `run()`."""

    def __init__(
        self,
        definition: Mapping[str, Any],
        *,
        script: ScriptSpec = None,
        inputs: Json = None,
        known_types: Sequence[str] = KNOWN_TYPES,
        chaos: Chaos | None = None,
        run_id: str = RUN_ID,
        checkpoint: Json = None,
    ) -> None:
        self.definition = dict(definition)
        self.checkpoint = checkpoint
        self.script = scripted(script)
        self.inputs = inputs
        self.known_types = list(known_types)
        self.chaos = chaos
        self.rng = random.Random(chaos.seed if chaos else 0)
        self.run_id = run_id
        self.state: RunState | None = None
        self.log: list[Event] = []
        self.now = 0
        self.pending: list[Pending] = []
        self._inbox: deque[Event] = deque()
        self._answered: set[str] = set()  # event ids the world has reacted to
        self._counter = 0
        self.raced: set[str] = set()  # inputs appended before the answer to an earlier one

    # --- driving ---------------------------------------------------------------------

    def start(self) -> Simulation:
        """Submit the run (and fold what that leads to)."""
        submitted = RunSubmitted(
            self.run_id, self.definition, self.inputs, self.known_types, checkpoint=self.checkpoint
        )
        self.append(submitted)
        return self

    def append(self, payload: Payload, *, actor: str = "sim") -> Event:
        """Append an event from outside the coordinator at the current time."""
        event = Event(self._new_id(), self.run_id, self.now, payload, actor=actor)
        self.append_event(event)
        return event

    def append_together(self, *entries: tuple[Payload, str]) -> None:
        """Append (payload, actor) events from outside that all land in the log before
        the coordinator's answer to the first: a race, e.g. a person's decision between
        a signal and the decision the coordinator makes of it."""
        for index, (payload, actor) in enumerate(entries):
            event = Event(self._new_id(), self.run_id, self.now, payload, actor=actor)
            if index:
                self.raced.add(event.event_id)
            self._inbox.append(event)
        while self._inbox:
            self._fold_next(self._inbox.popleft())

    def append_event(self, event: Event) -> None:
        """Append `event` as is (a duplicate keeps its id) and fold what follows."""
        self._inbox.append(event)
        while self._inbox:
            self._fold_next(self._inbox.popleft())

    def step(self) -> bool:
        """Deliver one pending answer or timer; False when nothing is pending."""
        if not self.pending:
            return False
        item = self.pending.pop(self._choose())
        self.now = max(self.now, item.due)
        if item.event is not None:
            self.append_event(item.event)
        elif item.then is not None:
            self._worker_started(item)
        else:
            self._deliver_answer(item.payload)
        return True

    def run(self, max_steps: int = 20_000) -> RunState:
        """Start if needed, then deliver until nothing is pending (or `max_steps`)."""
        if not self.log:
            self.start()
        for _ in range(max_steps):
            if not self.step():
                break
        return self.current

    def run_until(self, predicate: Callable[[Simulation], bool], max_steps: int = 20_000) -> None:
        """Deliver until `predicate` holds; fails if it never does."""
        if not self.log:
            self.start()
        for _ in range(max_steps):
            if predicate(self):
                return
            if not self.step():
                break
        assert predicate(self), "the condition never held"

    # --- queries ---------------------------------------------------------------------

    @property
    def current(self) -> RunState:
        assert self.state is not None, "the run was never submitted"
        return self.state

    def distinct(self) -> Iterator[Event]:
        """The log without its duplicates (same id), in order of first appearance."""
        seen: set[str] = set()
        for event in self.log:
            if event.event_id not in seen:
                seen.add(event.event_id)
                yield event

    def payloads(self, kind: type[P]) -> list[P]:
        return [payload for _, payload in self.entries(kind)]

    def entries(self, kind: type[P]) -> list[tuple[Event, P]]:
        """Each distinct event whose payload is a `kind`, with that payload typed."""
        return [(e, e.payload) for e in self.distinct() if isinstance(e.payload, kind)]

    def scheduled(self) -> list[tuple[str, int, int]]:
        """(node, iteration, attempt) of every NodeScheduled, in log order."""
        return [(p.node_id, p.iteration, p.attempt) for p in self.payloads(NodeScheduled)]

    def runs_of(self, node_id: str) -> list[tuple[int, int]]:
        """(iteration, attempt) of each scheduled instance of `node_id`."""
        return [(i, a) for n, i, a in self.scheduled() if n == node_id]

    def terminal(self) -> Any:
        """The run's single terminal event payload."""
        ends = [e.payload for e in self.distinct() if isinstance(e.payload, TERMINAL_RUN_EVENTS)]
        assert len(ends) == 1, f"expected one terminal event, got {ends}"
        return ends[0]

    # --- the log and the fold ----------------------------------------------------------

    def _new_id(self) -> str:
        self._counter += 1
        return f"sim-{self._counter}"

    def _fold_next(self, event: Event) -> None:
        self.log.append(event)
        self.state, emitted = fold(self.state, event)
        if self.state is not None:
            check_counter(self.state)
        self._inbox.extend(emitted)
        self._react(event)
        if self.chaos and self.rng.random() < self.chaos.duplicate:
            self._add(self.now + self.rng.randint(0, 50), event.payload, event=event)

    def _react(self, event: Event) -> None:
        """The world sees each event once: workers take tasks, timers get armed."""
        if event.event_id in self._answered:
            return
        self._answered.add(event.event_id)
        payload = event.payload
        if isinstance(payload, NodeScheduled):
            self._take_task(payload)
        elif isinstance(payload, TimerSet):
            self._add(payload.fire_at, TimerFired(payload.run_id, payload.timer_id))
        elif isinstance(payload, ExpressionRequested):
            self._add(self.now, evaluated(payload))

    def _take_task(self, task: NodeScheduled) -> None:
        outcome = self.script(task)
        if outcome.started or outcome.asks_approval:
            worker = f"worker-{task.node_id}"
            started = NodeStarted(task.run_id, task.node_id, task.iteration, task.attempt, worker)
            self._add(self.now, started, then=outcome)
        elif outcome.kind != "hang":
            self._add(self.now + outcome.duration_ms, _answer(task, outcome))

    def _worker_started(self, item: Pending) -> None:
        task, outcome = item.payload, item.then
        assert isinstance(task, NodeStarted)
        assert outcome is not None
        self._deliver_answer(task)
        if outcome.asks_approval:
            self._ask_approval(task, decide=outcome.kind != "hang", within=outcome.duration_ms)
        if outcome.kind != "hang":
            self._add(self.now + outcome.duration_ms, _answer(task, outcome))

    def _ask_approval(self, task: NodeStarted, *, decide: bool, within: int) -> None:
        approval_id = f"{task.node_id}:{task.iteration}:{task.attempt}"
        self._deliver_answer(
            ApprovalRequested(task.run_id, approval_id, task.node_id, task.iteration, "ok?")
        )
        if decide:
            decided = ApprovalDecided(task.run_id, approval_id, "approved", "approver")
            self._add(self.now + within // 2, decided)

    def _deliver_answer(self, payload: Payload) -> None:
        actor = "timer-service" if isinstance(payload, TimerFired) else "worker"
        self.append(payload, actor=actor)
        worker_answer = isinstance(payload, _WORKER_ANSWERS)
        if worker_answer and self.chaos and self.rng.random() < self.chaos.redeliver:
            self._add(self.now + self.rng.randint(0, 50), payload)

    def _add(self, due: int, payload: Payload, **extra: Any) -> None:
        self._counter += 1
        self.pending.append(Pending(due, self._counter, payload, **extra))

    def _choose(self) -> int:
        if self.chaos and self.chaos.shuffle:
            return self.rng.randrange(len(self.pending))
        return self.pending.index(min(self.pending))


_WORKER_ANSWERS = (
    NodeStarted,
    NodeCompleted,
    NodeFailed,
    ApprovalRequested,
    ApprovalDecided,
    ExpressionEvaluated,
)


def evaluated(request: ExpressionRequested) -> ExpressionEvaluated:
    """The evaluator's answer (in process: the programs here are the tests' own)."""
    try:
        result = evaluate(request.program, request.input)
    except ExpressionError as error:
        return ExpressionEvaluated(request.run_id, request.request_id, error=error.message)
    if request.purpose != "output":
        result = result is not None and result is not False
    return ExpressionEvaluated(request.run_id, request.request_id, result)


def _answer(task: NodeScheduled | NodeStarted, outcome: Outcome) -> Payload:
    run_id, node_id, iteration, attempt = task.run_id, task.node_id, task.iteration, task.attempt
    if outcome.kind == "complete":
        output = outcome.output
        if output is ECHO:
            output = {"node": node_id, "iteration": iteration, "attempt": attempt}
        return NodeCompleted(run_id, node_id, iteration, attempt, output)
    retryable = outcome.kind == "fail"
    return NodeFailed(run_id, node_id, iteration, attempt, outcome.error, retryable)


# --- checks ------------------------------------------------------------------------------


def check_counter(state: RunState) -> None:
    """The run's counter is exactly its outstanding node instances, never negative."""
    holding = sum(1 for node in state.nodes.values() if node.status in OUTSTANDING)
    if state.outstanding < 0 or state.outstanding != holding:
        raise InvariantBroken(
            f"outstanding={state.outstanding} but {holding} node instances hold a token: "
            f"{ {n: s.status.value for n, s in state.nodes.items()} }"
        )


def canonical(state: RunState | None) -> str:
    """A text dump of everything in `state` (sets sorted, dict order kept)."""
    return json.dumps(_plain(state), separators=(",", ":"))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return {
            "@": type(value).__name__,
            **{f.name: _plain(getattr(value, f.name)) for f in fields},
        }
    if isinstance(value, dict):
        return [[_plain(k), _plain(v)] for k, v in value.items()]
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def replayed(events: Sequence[Event]) -> RunState | None:
    return replay(list(events))
