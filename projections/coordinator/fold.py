"""The coordinator as a deterministic fold: `(run state, event) -> (state, events to emit)`.

No clock, no randomness, no I/O, no tenant code: time is the `occurred_at` of the
event being folded; edge conditions and the run's output expression are jq written by
a tenant, so the fold asks for them (`ExpressionRequested`) and continues when the
verdict arrives in the log (`ExpressionEvaluated`), evaluated under the sandbox's
budgets by an evaluator. Replaying the log thus reaches the same verdicts however
long the evaluation took. Every emitted event's id is derived from its cause's id.
So folding the same log always makes the same decisions with the same ids, and a
host that crashes after appending some emitted events but before committing its
offset only produces duplicates that the fold (and every projection) ignores by event id.

Every state change is driven by an event. A decision emits an event and applies it
at once, through the same handler that applies it when it arrives from the log
(where it is then recognised by id and skipped). The state is mutated in place for
speed: the host owns it, and replaying a run's events into a fresh state rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from typing import Any, Final

from aob.events.ids import derived_event_id
from aob.events.types import (
    TERMINAL_RUN_EVENTS,
    ApprovalDecided,
    ApprovalEscalated,
    ApprovalRequested,
    ApprovalVoted,
    Event,
    ExpressionEvaluated,
    ExpressionRequested,
    LoopExhausted,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    PatchApplied,
    PatchProposed,
    PatchRejected,
    PatchReviewed,
    PatchReviewRequested,
    Payload,
    RunCancelled,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    RunSubmitted,
    SignalReceived,
    TimerFired,
    TimerSet,
)
from aob.projections.coordinator import approvals
from aob.projections.coordinator.state import (
    FINISHED,
    OUTSTANDING,
    NodeState,
    NodeStatus,
    PendingExpression,
    RunState,
    RunStatus,
    Timer,
)
from aob.projections.workflow.compiler import InvalidDefinition, compile_workflow
from aob.projections.workflow.definition import ON_TIMEOUT_DEFAULT
from aob.projections.workflow.ir import EdgeSpec, NodeSpec, WorkflowIR
from aob.projections.workflow.materialize import apply_patch
from aob.projections.workflow.node_types import unknown_type_reason

# Approval deadlines are timers like node timeouts: set when the approval is requested
# (at the deadline its hitl service chose), firing decides it unless someone did.
APPROVAL_TIMER: Final = "approval"
# Who decides an approval at its deadline (people may not use the "system:" prefix).
TIMEOUT_DECIDER: Final = "system:timeout"


def approval_timer_id(run_id: str, approval_id: str) -> str:
    return approvals.approval_timer_id(run_id, approval_id)


def fold(state: RunState | None, event: Event) -> tuple[RunState | None, list[Event]]:
    """Fold one event of a run; returns the run's state and the events to append.

    `state` is None before the run's `RunSubmitted`; events of unknown runs are
    ignored. Events already folded (same id) change nothing and emit nothing.
    """
    if state is None:
        if not isinstance(event.payload, RunSubmitted):
            return None, []
        state, problem = _new_run(event.payload)
        step = _Step(state, event, fresh=True)
        if problem is not None:
            step.emit(RunFailed(state.run_id, f"definition does not compile: {problem}"))
    elif event.event_id in state.seen:
        return state, []
    else:
        step = _Step(state, event)
    step.run()
    return state, step.emitted


def replay(events: list[Event]) -> RunState | None:
    """The state after folding `events` in order (emitted events are discarded)."""
    state: RunState | None = None
    for event in events:
        state, _ = fold(state, event)
    return state


def _new_run(submitted: RunSubmitted) -> tuple[RunState, str | None]:
    """A fresh run state, and why its definition does not compile (None when it does)."""
    problem = None
    try:
        ir = compile_workflow(submitted.definition)
    except InvalidDefinition as error:
        problem = "; ".join(f"{p.path}: {p.message}" for p in error.problems)
        ir = _EMPTY_IR
    state = RunState(
        run_id=submitted.run_id,
        status=RunStatus.RUNNING,
        base=submitted.definition,
        definition=submitted.definition,
        ir=ir,
        inputs=submitted.inputs,
        known_types=frozenset(submitted.known_types),
        nodes={node_id: NodeState() for node_id in ir.nodes},
        tenant=submitted.tenant,
    )
    _seed(state, submitted.checkpoint)
    return state, problem


def _seed(state: RunState, checkpoint: Any) -> None:
    """Start the nodes a replayed run had completed as completed, with their outputs."""
    outputs = checkpoint.get("outputs") if isinstance(checkpoint, dict) else None
    for node_id, output in (outputs if isinstance(outputs, dict) else {}).items():
        node = state.nodes.get(node_id)
        if node is not None:
            node.status = NodeStatus.COMPLETED
            state.outputs[node_id] = output
            state.ever_started.add(node_id)


# A worker may be running the instance: its answer or its timeout counts.
_ATTEMPTING = frozenset({NodeStatus.SCHEDULED, NodeStatus.RUNNING})

# What a run whose definition does not compile runs: nothing (it fails at once).
_EMPTY_IR = WorkflowIR("invalid", {}, {}, {}, (), (), ())

# What an answered expression means for the run, by purpose, when it failed.
_FAILURE_PREFIX: Final = {
    "edge": "condition on edge {source}->{target} failed: ",
    "loop": "loop condition on edge {source}->{target} failed: ",
    "output": "run output expression failed: ",
}


class _Step:
    """Folds one incoming event and everything it leads to, in causal order."""

    def __init__(self, state: RunState, cause: Event, *, fresh: bool = False) -> None:
        self.state = state
        self.cause = cause
        self.fresh = fresh  # the cause created the run (a later RunSubmitted is ignored)
        self.now = cause.occurred_at
        self.emitted: list[Event] = []
        self._queue: deque[Event] = deque([cause])
        # Node instances decided in this step whose event is still queued: deciding
        # them again (two edges resolving one join) must not schedule twice.
        self._decided: set[tuple[str, int]] = set()
        self._ending = False  # a terminal run event was emitted: emit nothing more

    def run(self) -> None:
        while self._queue:
            event = self._queue.popleft()
            self.state.seen.add(event.event_id)
            self._apply(event.payload)

    def emit(self, payload: Payload) -> None:
        if self._ending:
            return
        self._ending = isinstance(payload, TERMINAL_RUN_EVENTS)
        event = Event(
            event_id=derived_event_id(self.cause.event_id, len(self.emitted)),
            key=self.state.run_id,
            occurred_at=self.now,
            payload=payload,
            trace_id=self.cause.trace_id,
            causation_id=self.cause.event_id,
            actor="coordinator",
        )
        self.emitted.append(event)
        self._queue.append(event)

    # --- applying events ---------------------------------------------------------

    def _apply(self, payload: Payload) -> None:
        state = self.state
        if state.is_finished:
            return
        match payload:
            case RunSubmitted():
                if self.fresh:
                    self._start()
            case NodeScheduled():
                self._on_scheduled(payload)
            case NodeStarted():
                self._on_started(payload)
            case NodeCompleted():
                self._on_completed(payload)
            case NodeFailed():
                self._on_failed(payload)
            case NodeSkipped():
                self._on_skipped(payload)
            case TimerSet():
                state.timers[payload.timer_id] = Timer(
                    payload.purpose, payload.node_id, payload.iteration, payload.attempt
                )
            case TimerFired():
                self._on_timer(payload)
            case ExpressionEvaluated():
                self._on_evaluated(payload)
            case PatchProposed():
                self._on_patch(payload)
            case PatchReviewed():
                self._on_review(payload)
            case PatchApplied() | PatchRejected() | PatchReviewRequested() | ExpressionRequested():
                pass  # decided (and applied) when it was emitted
            case ApprovalRequested():
                self._on_approval_requested(payload)
            case ApprovalDecided():
                state.pending_approvals.pop(payload.approval_id, None)
                state.timers.pop(approval_timer_id(state.run_id, payload.approval_id), None)
                if state.hitl:
                    approvals.forget(state, payload.approval_id)
                self._check_completion()
            case ApprovalVoted():
                approvals.on_vote(self, payload)
            case ApprovalEscalated():
                approvals.on_escalated(self, payload)
            case SignalReceived():
                approvals.on_signal(self, payload)
            case RunCancelRequested():
                self.emit(RunCancelled(state.run_id, payload.reason))
            case RunCompleted():
                state.status = RunStatus.COMPLETED
            case RunFailed():
                state.status = RunStatus.FAILED
            case RunCancelled():
                state.status = RunStatus.CANCELLED
            case _:
                pass  # workflow events never reach a run

    def _start(self) -> None:
        """Schedule the roots; in a replayed run, route onward from its seeded nodes."""
        state = self.state
        seeded = [n for n in state.ir.order if state.nodes[n].status is NodeStatus.COMPLETED]
        for node_id in seeded:
            self._route(node_id, passed=True)
        for node_id in state.ir.roots:
            if state.nodes[node_id].status is NodeStatus.PENDING:
                self._make_ready(node_id)
        if not state.ir.nodes or seeded:
            self._check_completion()

    def _current(
        self, node_id: str, iteration: int, attempt: int | None = None
    ) -> NodeState | None:
        """The node's state if the event names its current instance, else None (stale)."""
        node = self.state.nodes.get(node_id)
        if node is None or node.iteration != iteration:
            return None
        if attempt is not None and node.attempt != attempt:
            return None
        return node

    def _on_scheduled(self, event: NodeScheduled) -> None:
        node = self.state.nodes.get(event.node_id)
        if node is None or node.iteration != event.iteration:
            return
        first_attempt = node.status is NodeStatus.PENDING
        retry = node.status is NodeStatus.RETRY_WAIT and event.attempt == node.attempt + 1
        if not (first_attempt or retry):
            return
        if node.status is NodeStatus.PENDING:
            self.state.outstanding += 1
        node.iteration, node.attempt = event.iteration, event.attempt
        node.status = NodeStatus.SCHEDULED
        self.state.ever_started.add(event.node_id)
        if event.timeout_ms:
            self._set_timer(event, "timeout", self.now + event.timeout_ms)

    def _on_started(self, event: NodeStarted) -> None:
        node = self._current(event.node_id, event.iteration, event.attempt)
        if node is not None and node.status is NodeStatus.SCHEDULED:
            node.status = NodeStatus.RUNNING

    def _on_completed(self, event: NodeCompleted) -> None:
        node = self._current(event.node_id, event.iteration, event.attempt)
        if node is None or node.status not in _ATTEMPTING:
            return
        self._finish(event.node_id, NodeStatus.COMPLETED)
        self.state.outputs[event.node_id] = event.output
        if event.output_ref is not None:
            self.state.output_refs[event.node_id] = event.output_ref
        else:
            self.state.output_refs.pop(event.node_id, None)
        if not self._take_loop(event.node_id):
            self._route(event.node_id, passed=True)
        self._check_completion()

    def _on_failed(self, event: NodeFailed) -> None:
        node = self._current(event.node_id, event.iteration, event.attempt)
        if node is None or node.status not in _ATTEMPTING:
            return
        retry = self.state.ir.nodes[event.node_id].retry
        if event.retryable and event.attempt < retry.max_attempts:
            node.status = NodeStatus.RETRY_WAIT
            self._set_timer(event, "retry", self.now + retry.backoff_ms(event.attempt))
            return
        self._finish(event.node_id, NodeStatus.FAILED)
        attempts = f" after {event.attempt} attempts" if event.attempt > 1 else ""
        why = _not_retried(event, retry.max_attempts)
        error = f"node {event.node_id!r} failed{attempts}: {event.error} (not retried: {why})"
        self.emit(RunFailed(self.state.run_id, error, event.node_id))

    def _set_timer(self, instance: NodeFailed | NodeScheduled, purpose: str, fire_at: int) -> None:
        node_id, iteration, attempt = instance.node_id, instance.iteration, instance.attempt
        timer_id = f"{self.state.run_id}:{node_id}:{iteration}:{attempt}:{purpose}"
        self.emit(
            TimerSet(self.state.run_id, timer_id, fire_at, purpose, node_id, iteration, attempt)
        )

    def _on_skipped(self, event: NodeSkipped) -> None:
        node = self._current(event.node_id, event.iteration)
        if node is None or node.status is not NodeStatus.PENDING:
            return
        node.status = NodeStatus.SKIPPED
        node.passthrough = event.warning
        self._route(event.node_id, passed=event.warning)
        self._check_completion()

    def _on_timer(self, event: TimerFired) -> None:
        timer = self.state.timers.pop(event.timer_id, None)
        if timer is None:
            return
        node = self._current(timer.node_id, timer.iteration, timer.attempt)
        if node is None:
            return
        if timer.purpose == "retry" and node.status is NodeStatus.RETRY_WAIT:
            self._schedule(timer.node_id, node.iteration, node.attempt + 1)
        elif timer.purpose == APPROVAL_TIMER and node.status in _ATTEMPTING:
            self._approval_timed_out(event.timer_id, timer.node_id)
        elif timer.purpose == "timeout" and node.status in _ATTEMPTING:
            timeout = self.state.ir.nodes[timer.node_id].timeout_ms
            error = f"timed out after {timeout} ms"
            self.emit(
                NodeFailed(self.state.run_id, timer.node_id, timer.iteration, timer.attempt, error)
            )

    def _on_approval_requested(self, event: ApprovalRequested) -> None:
        """Count an approval while the instance that asked for it still holds a token."""
        node = self._current(event.node_id, event.iteration)
        if node is not None and node.status in OUTSTANDING:
            self.state.pending_approvals[event.approval_id] = event.node_id
            if event.deadline is not None:  # set by the hitl service, on its clock
                timer_id = approval_timer_id(self.state.run_id, event.approval_id)
                self.emit(
                    TimerSet(
                        self.state.run_id,
                        timer_id,
                        event.deadline,
                        APPROVAL_TIMER,
                        event.node_id,
                        event.iteration,
                        node.attempt,
                    )
                )
            approvals.on_requested(self, event)

    def _approval_timed_out(self, timer_id: str, node_id: str) -> None:
        """An approval still pending at its deadline is decided as the node's
        `on_timeout` says, by "system:timeout"; one decided before stays decided."""
        run_id = self.state.run_id
        approval_id = approvals.timed_out_approval(self.state, timer_id)
        if approval_id is None or approvals.escalate(self, approval_id):
            return
        config = self.state.ir.nodes[node_id].config
        meaning = str(config.get("on_timeout") or ON_TIMEOUT_DEFAULT)
        self.emit(
            ApprovalDecided(
                run_id, approval_id, meaning, TIMEOUT_DECIDER, "no decision by the deadline"
            )
        )

    # --- patches -----------------------------------------------------------------

    def _on_patch(self, event: PatchProposed) -> None:
        state = self.state
        if event.patch_id in state.patches:
            return  # proposed again (at-least-once): decided already
        state.patches.add(event.patch_id)
        stale = self._stale_proposer(event)
        if stale is not None:
            self.emit(PatchRejected(state.run_id, event.patch_id, [stale]))
            self._check_completion()
            return
        # An agent's patch waits for a reviewer when the workflow asks for review; the
        # policy is the submitted definition's, so no patch can lift it.
        review = event.node_id is not None and state.base.get("patch_policy") == "review"
        self._decide_patch(event.patch_id, event.operations, review=review)

    def _stale_proposer(self, event: PatchProposed) -> str | None:
        """Why the agent instance that proposed `event` may not patch any more (a
        timed-out, failed or superseded attempt), or None when it may."""
        if event.node_id is None or event.attempt is None:
            return None  # a person's patch (or one recorded before instances were named)
        node = self._current(event.node_id, event.iteration or 0, event.attempt)
        if node is not None and node.status in _ATTEMPTING:
            return None
        return (
            f"proposed by {event.node_id!r} attempt {event.attempt}, which is no longer the "
            "node's current attempt: only the current attempt may patch the run"
        )

    def _on_review(self, event: PatchReviewed) -> None:
        """A reviewer's decision: an approved patch applies if it still does (the run
        may have moved on since it was proposed)."""
        operations = self.state.pending_patches.pop(event.patch_id, None)
        if operations is None:
            return  # not awaiting review (decided already, or never proposed)
        if event.decision == "approve":
            self._decide_patch(event.patch_id, operations)
            return
        reason = f"rejected in review by {event.reviewed_by}"
        reason += f": {event.reason}" if event.reason else ""
        self.emit(PatchRejected(self.state.run_id, event.patch_id, [reason]))
        self._check_completion()

    def _decide_patch(self, patch_id: str, operations: Any, *, review: bool = False) -> None:
        state = self.state
        outcome = apply_patch(
            state.definition,
            operations,
            frozen_nodes=frozenset(state.ever_started),
            base_node_ids=_node_ids(state.base),
            agents_added_so_far=state.agents_added,
        )
        if outcome.problems or outcome.definition is None:
            reasons = [f"{p.path}: {p.message}" if p.path else p.message for p in outcome.problems]
            self.emit(PatchRejected(state.run_id, patch_id, reasons))
            self._check_completion()
            return
        if review:
            state.pending_patches[patch_id] = operations
            self.emit(PatchReviewRequested(state.run_id, patch_id))
            return
        self._adopt(outcome.definition, outcome.added_agents)
        added = list(outcome.added_nodes)
        self.emit(PatchApplied(state.run_id, patch_id, state.revision, added))
        self._reevaluate_pending()

    def _adopt(self, definition: dict[str, Any], added_agents: int) -> None:
        """Run the patched definition from now on: its nodes, edges and loops."""
        state = self.state
        state.revision += 1
        state.agents_added += added_agents
        state.definition = definition
        state.ir = compile_workflow(definition)
        for node_id in state.ir.nodes:
            state.nodes.setdefault(node_id, NodeState())
        for node_id in [n for n in state.nodes if n not in state.ir.nodes]:
            del state.nodes[node_id]  # removed by the patch; it never started

    def _reevaluate_pending(self) -> None:
        """After a patch: decide edges out of finished nodes into pending ones, resolve joins."""
        state = self.state
        for node_id in state.ir.order:
            if state.nodes[node_id].status is not NodeStatus.PENDING:
                continue
            if not state.ir.incoming[node_id]:
                if node_id not in state.ever_started:
                    self._make_ready(node_id)  # a new root
                continue
            self._decide_from_finished(node_id)
            self._resolve(node_id)
        self._check_completion()

    def _decide_from_finished(self, target: str) -> None:
        """Decide the undecided edges into `target` from finished nodes (conditions
        not answered yet stay undecided until their verdict arrives)."""
        state = self.state
        for source in dict.fromkeys(e.source for e in state.ir.incoming[target]):
            node = state.nodes[source]
            if (source, target) in state.edge_taken or node.status not in FINISHED:
                continue
            passed = node.status is NodeStatus.COMPLETED or node.passthrough
            taken = self._verdict(source, target, passed=passed)
            if taken is not None:
                state.edge_taken[(source, target)] = taken

    # --- routing -----------------------------------------------------------------

    def _route(self, source: str, *, passed: bool) -> None:
        """Decide the forward edges out of `source`, then resolve the targets' joins."""
        targets = list(dict.fromkeys(e.target for e in self.state.ir.outgoing[source]))
        for target in targets:
            taken = self._verdict(source, target, passed=passed)
            if taken is not None:
                self.state.edge_taken[(source, target)] = taken
        for target in targets:
            self._resolve(target)

    def _verdict(self, source: str, target: str, *, passed: bool) -> bool | None:
        """Whether control flows from `source` to `target`, through any of the edges
        between them; None while a condition it depends on awaits its verdict."""
        if not passed:
            return False
        edges = [e for e in self.state.ir.outgoing[source] if e.target == target]
        return self._any_taken("edge", edges)

    def _any_taken(self, purpose: str, edges: list[EdgeSpec]) -> bool | None:
        """True if one of `edges` is taken, False if none is, None while undecided
        (the conditions without a verdict have been asked for)."""
        unanswered = False
        for edge in edges:
            if edge.when is None:
                return True
            verdict = self._condition(purpose, edge)
            if verdict:
                return True
            unanswered = unanswered or verdict is None
        return None if unanswered else False

    def _condition(self, purpose: str, edge: EdgeSpec) -> bool | None:
        """The verdict on `edge`'s condition in its source's current iteration; None
        until it arrives (it is asked for once)."""
        assert edge.when is not None
        state = self.state
        iteration = state.nodes[edge.source].iteration
        digest = hashlib.sha256(edge.when.encode()).hexdigest()[:16]
        request_id = f"{purpose}:{edge.source}->{edge.target}:{iteration}:{digest}"
        if request_id in state.verdicts:
            return state.verdicts[request_id]
        if request_id not in state.awaiting:
            pending = PendingExpression(purpose, edge.source, edge.target, iteration)
            self._request(request_id, pending, edge.when, edge.reads)
        return None

    def _request(
        self,
        request_id: str,
        pending: PendingExpression,
        program: str,
        reads: frozenset[str] | None,
    ) -> None:
        state = self.state
        state.awaiting[request_id] = pending
        self.emit(
            ExpressionRequested(
                run_id=state.run_id,
                request_id=request_id,
                purpose=pending.purpose,
                program=program,
                input=state.context(pending.iteration, reads),
                output_refs=state.refs(reads),
                source=pending.source,
                target=pending.target,
                iteration=pending.iteration,
                tenant=state.tenant,
            )
        )

    def _on_evaluated(self, event: ExpressionEvaluated) -> None:
        """A verdict arrived: continue what waited for it (stale ones are dropped)."""
        state = self.state
        pending = state.awaiting.pop(event.request_id, None)
        if pending is None:
            return  # answered already, or its iteration was abandoned
        if event.error is not None:
            prefix = _FAILURE_PREFIX[pending.purpose].format(
                source=pending.source, target=pending.target
            )
            self.emit(RunFailed(state.run_id, prefix + event.error, pending.source))
            return
        if pending.purpose == "output":
            self._on_output(event)
            return
        taken = event.result is not None and event.result is not False
        state.verdicts[event.request_id] = taken
        source = pending.source
        assert source is not None
        assert pending.target is not None
        node = state.nodes.get(source)
        if node is None or node.iteration != pending.iteration:
            return  # the source moved on (a loop restarted it)
        if pending.purpose == "loop":
            if node.status is NodeStatus.COMPLETED and not self._take_loop(source):
                self._route(source, passed=True)
        elif (source, pending.target) not in state.edge_taken and pending.target in state.nodes:
            passed = node.status is NodeStatus.COMPLETED or node.passthrough
            verdict = self._verdict(source, pending.target, passed=passed)
            if verdict is not None:
                state.edge_taken[(source, pending.target)] = verdict
            self._resolve(pending.target)
        self._check_completion()

    def _resolve(self, node_id: str) -> None:
        """Schedule or skip a pending node once its join can be decided."""
        node = self.state.nodes[node_id]
        if node.status is not NodeStatus.PENDING or self.state.is_finished:
            return
        join = self.state.ir.nodes[node_id].join
        decided = [
            self.state.edge_taken.get((e.source, node_id)) for e in self.state.ir.incoming[node_id]
        ]
        if join == "any" and any(decided):
            self._make_ready(node_id)
        elif all(d is not None for d in decided):
            if any(decided):
                self._make_ready(node_id)
            elif self._decide(node_id, node.iteration):
                reason = "no incoming edge was taken"
                self.emit(NodeSkipped(self.state.run_id, node_id, node.iteration, reason))

    def _make_ready(self, node_id: str) -> None:
        spec = self.state.ir.nodes[node_id]
        node = self.state.nodes[node_id]
        if not self._decide(node_id, node.iteration):
            return
        if spec.type not in self.state.known_types:
            reason = unknown_type_reason(spec.type, self.state.known_types)
            self.emit(NodeSkipped(self.state.run_id, node_id, node.iteration, reason, warning=True))
            return
        self._schedule(node_id, node.iteration, 1)

    def _decide(self, node_id: str, iteration: int) -> bool:
        """Claim the decision for a node instance in this step; False if already made."""
        if (node_id, iteration) in self._decided:
            return False
        self._decided.add((node_id, iteration))
        return True

    def _schedule(self, node_id: str, iteration: int, attempt: int) -> None:
        spec: NodeSpec = self.state.ir.nodes[node_id]
        self.emit(
            NodeScheduled(
                run_id=self.state.run_id,
                node_id=node_id,
                node_type=spec.type,
                iteration=iteration,
                attempt=attempt,
                config=spec.config,
                input=self.state.context(iteration, spec.reads),
                timeout_ms=spec.timeout_ms,
                output_refs=self.state.refs(spec.reads),
                tenant=self.state.tenant,
            )
        )

    # --- loops -------------------------------------------------------------------

    def _take_loop(self, source: str) -> bool:
        """Start the next iteration of a loop whose back-edge leaves `source`, if one is
        taken. True also while a loop condition awaits its verdict: nothing routes on
        before it is known (its arrival calls this again)."""
        state = self.state
        for index, edge in enumerate(state.ir.loops):
            key = (edge.source, edge.target)
            count = state.loop_counts.get(key, 0)
            at_limit = count >= (edge.max_iterations or 0)
            if edge.source != source or (at_limit and edge.when is None):
                continue  # a counted loop ends on its count: nothing to warn about
            taken = True if edge.when is None else self._condition("loop", edge)
            if taken is None:
                return True
            if taken and at_limit:
                if self._exhausted(edge, count):
                    return True  # the run failed: nothing routes on
            elif taken:
                state.loop_counts[key] = count + 1
                self._restart(state.ir.loop_bodies[index], edge.target)
                return True
        return False

    def _exhausted(self, edge: EdgeSpec, iterations: int) -> bool:
        """A loop whose condition still holds ended on its bound: say so, and fail the
        run if the loop asks for that. True when the run failed."""
        state = self.state
        failed = edge.on_limit == "fail"
        self.emit(LoopExhausted(state.run_id, edge.source, edge.target, iterations, failed))
        if failed:
            error = (
                f"loop {edge.source}->{edge.target} reached max_iterations ({iterations})"
                " with its condition still true (on_limit: fail)"
            )
            self.emit(RunFailed(state.run_id, error, edge.source))
        return failed

    def _restart(self, body: frozenset[str], entry: str) -> None:
        """Reset the loop body to pending in a new iteration and schedule its entry."""
        state = self.state
        for node_id in sorted(body):
            self._abandon(node_id)  # a late result of the old iteration is stale
            state.nodes[node_id] = NodeState(iteration=state.nodes[node_id].iteration + 1)
        for key in [k for k in state.edge_taken if k[0] in body]:
            del state.edge_taken[key]
        for request_id in [r for r, p in state.awaiting.items() if p.source in body]:
            del state.awaiting[request_id]  # conditions of the old iteration
        self._make_ready(entry)

    # --- completion --------------------------------------------------------------

    def _abandon(self, node_id: str) -> None:
        """Release the token of the node's current instance, if it holds one."""
        if self.state.nodes[node_id].status in OUTSTANDING:
            self.state.outstanding -= 1
            approvals = self.state.pending_approvals
            for approval_id in [a for a, n in approvals.items() if n == node_id]:
                del approvals[approval_id]  # nobody waits for it any more

    def _finish(self, node_id: str, status: NodeStatus) -> None:
        self._abandon(node_id)
        self.state.nodes[node_id].status = status

    def _quiescent(self) -> bool:
        """Nothing runs, waits or is about to be decided: the run can end."""
        state = self.state
        if state.is_finished or state.outstanding or state.pending_approvals:
            return False
        if state.pending_patches or state.awaiting:
            return False  # a patch under review may add work; a verdict may route on
        # Pending nodes: a decision for them is already queued in this step.
        pending = any(n.status is NodeStatus.PENDING for n in state.nodes.values())
        return not (self._ending or pending)

    def _check_completion(self) -> None:
        if not self._quiescent():
            return
        state = self.state
        program, reads = state.ir.output, state.ir.output_reads
        if program is None:
            sinks = [n for n in state.ir.sinks if n in state.outputs]
            if not any(n in state.output_refs for n in sinks):
                self.emit(RunCompleted(state.run_id, {n: state.outputs[n] for n in sinks}))
                return
            # Some sink outputs are in the blob store: the evaluator assembles them.
            program, reads = _sinks_program(sinks), frozenset(sinks)
        state.output_requests += 1
        request_id = f"output:{state.output_requests}"
        pending = PendingExpression("output", None, None, 0)
        self._request(request_id, pending, program, reads)

    def _on_output(self, event: ExpressionEvaluated) -> None:
        """The run's output: the run ends with it unless work started meanwhile (a
        patch applied while it was evaluated); then it is asked for again later."""
        if not self._quiescent():
            self._check_completion()
            return
        self.emit(RunCompleted(self.state.run_id, event.result, event.result_ref))


def _not_retried(failure: NodeFailed, max_attempts: int) -> str:
    """Why a failed node gets no further attempt, for its run's error."""
    if not failure.retryable:
        return failure.not_retried or "the worker marked the failure permanent"
    if max_attempts <= 1:
        return "the node has no retry policy, its retry.max_attempts is 1"
    return f"all {max_attempts} attempts of its retry.max_attempts used"


def _sinks_program(sinks: list[str]) -> str:
    """A jq program building {sink: output} (the run output when none is declared)."""
    fields = ", ".join(f"{json.dumps(n)}: .nodes[{json.dumps(n)}]" for n in sinks)
    return "{" + fields + "}"


def _node_ids(definition: dict[str, Any]) -> frozenset[str]:
    nodes = definition.get("nodes", [])
    return frozenset(n["id"] for n in nodes if isinstance(n, dict) and "id" in n)
