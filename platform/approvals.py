"""Approval commands: decide, list, show (the approvals part of the application
layer: a decision is recorded through `aob.platform.commands.record_events`).

A decision is an `ApprovalDecided` event; the first one in log order wins. An
approval that needs a quorum (config `quorum` or `reject_quorum` above 1) takes votes
instead (`ApprovalVoted`, each voter counted once) and the coordinator decides when
enough are in. Whoever submitted the run may not approve it unless the node's config
says `allow_self_approval: true` (for authenticated callers: with authentication off,
names are self-declared and prove nothing). The
read model answers most callers before anything is appended (already decided,
run finished, not allowed); when two deciders race past that check, both events
are appended and, once projected, each caller compares the winner's event id with
its own: the loser gets 409 with the winning decision.
"""

from __future__ import annotations

from typing import Any

from aob.events.codec import decode
from aob.events.types import RUNS_TOPIC, ApprovalDecided, ApprovalVoted, Payload
from aob.platform.commands import record_events
from aob.platform.engine import Engine
from aob.platform.problems import Problem, not_found
from aob.workers.hitl import DECISIONS, refusal, self_approval_refusal

APPROVAL_STATUSES = ("pending", "approved", "rejected", "cancelled")


class Approvals:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.read = engine.read_models

    async def decide(
        self,
        approval_id: str,
        decision: str,
        comments: str,
        *,
        actor: str,
        roles: list[str],
        trace_id: str,
        authenticated: bool = False,
    ) -> dict[str, Any]:
        """Record `actor`'s decision (or vote); returns the approval, or raises Problem."""
        if decision not in DECISIONS:
            raise Problem(
                422,
                "invalid-decision",
                "Invalid decision",
                f"decision must be one of {list(DECISIONS)}, got {decision!r}",
            )
        approval = await self.get(approval_id)
        await self._refuse_closed(approval)
        why_not = refusal(approval["approvers"], actor, roles)
        if why_not is not None:
            raise Problem(
                403,
                "not-an-approver",
                "Not allowed to decide",
                why_not,
                approvers=approval["approvers"],
            )
        if authenticated:
            await self._refuse_self_approval(approval, decision, actor)
        if _needs_votes(approval):
            return await self._vote(approval, decision, comments, actor=actor, trace_id=trace_id)
        payload = ApprovalDecided(approval["run_id"], approval_id, decision, actor, comments)
        decided, event_id = await self._record(approval, payload, actor, trace_id)
        if decided["decision_event_id"] != event_id:
            await self._refuse_closed(decided, lost=True)
        return decided

    async def _refuse_self_approval(
        self, approval: dict[str, Any], decision: str, actor: str
    ) -> None:
        run = await self.read.get_run(approval["run_id"]) or {}
        why_not = self_approval_refusal(
            approval.get("policy"), decision, actor, run.get("submitted_by")
        )
        if why_not is not None:
            raise Problem(403, "self-approval", "May not approve one's own run", why_not)

    async def _vote(
        self, approval: dict[str, Any], decision: str, comments: str, *, actor: str, trace_id: str
    ) -> dict[str, Any]:
        """One vote towards a quorum; a second vote by the same person counts nothing
        (the first stands) and answers with the approval as it is."""
        if any(v.get("voter") == actor for v in approval.get("votes") or []):
            return {**approval, "duplicate_vote": True}
        payload = ApprovalVoted(
            approval["run_id"], approval["approval_id"], decision, actor, comments
        )
        voted, _ = await self._record(approval, payload, actor, trace_id)
        return voted

    async def _record(
        self, approval: dict[str, Any], payload: Payload, actor: str, trace_id: str
    ) -> tuple[dict[str, Any], str]:
        """Append `payload`, wait until it is projected; the approval then, and the
        appended event's id."""
        approval_id = approval["approval_id"]
        records = await record_events(
            self.engine, RUNS_TOPIC, approval["run_id"], [payload], actor=actor, trace_id=trace_id
        )
        event_id = decode(records[0].value).event_id
        if not await self.engine.projected.wait_for(records):
            raise Problem(
                503,
                "not-projected-yet",
                "Decision recorded, outcome unknown",
                "the decision was recorded but the read models have not caught up; "
                f"see GET /api/v1/approvals/{approval_id}",
                event_id=event_id,
            )
        now = await self.read.get_approval(approval_id)
        assert now is not None
        return now, event_id

    async def list_approvals(
        self, run_id: str | None, status: str | None, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """Approvals (of `tenant`'s runs), oldest request first; `status` None means any."""
        if run_id is not None and await self.read.get_run(run_id) is None:
            await self.engine.projected.wait_caught_up(timeout=2.0)  # a run that new
            if await self.read.get_run(run_id) is None:
                raise not_found("run", run_id)
        return await self.read.list_approvals(run_id=run_id, status=status, tenant=tenant)

    async def get(self, approval_id: str) -> dict[str, Any]:
        """The approval's read model; waits for the projector if it is that new."""
        approval = await self.read.get_approval(approval_id)
        if approval is None:
            await self.engine.projected.wait_caught_up(timeout=2.0)
            approval = await self.read.get_approval(approval_id)
        if approval is None:
            raise not_found("approval", approval_id)
        return approval

    async def show(self, approval_id: str) -> dict[str, Any]:
        """The approval with its context: the run, the node, what the node saw
        (run inputs and upstream outputs) and every decision made, in log order."""
        approval = await self.get(approval_id)
        run = await self.read.get_run(approval["run_id"]) or {}
        nodes = run.pop("nodes", [])
        run.pop("definition", None)
        node = next(
            (
                n
                for n in nodes
                if (n["node_id"], n["iteration"]) == (approval["node_id"], approval["iteration"])
            ),
            None,
        )
        task, decisions = await self._history(approval)
        return {
            **approval,
            "context": {
                "run": run,
                "node": node,
                "input": task["data"]["input"] if task else None,
                "decisions": decisions,
            },
        }

    async def _history(self, approval: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Any]]:
        """The task that asked for `approval` and the decisions made on it, in log order."""
        request: dict[str, Any] | None = None
        tasks: dict[str, dict[str, Any]] = {}
        decisions = []
        for event in await self._timeline(approval["run_id"]):
            kind, data = event["type"], event["data"]
            if kind == "NodeScheduled" and data["node_id"] == approval["node_id"]:
                tasks[event["event_id"]] = event
            elif kind == "ApprovalRequested" and data["approval_id"] == approval["approval_id"]:
                request = event
            elif kind == "ApprovalDecided" and data["approval_id"] == approval["approval_id"]:
                decisions.append(_decision(event, approval["decision_event_id"]))
            elif kind in _STEPS and data.get("approval_id") == approval["approval_id"]:
                decisions.append(_step(event))
        task = tasks.get(request["causation_id"] or "") if request else None
        return task, decisions

    async def _timeline(self, run_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while True:
            after = events[-1]["offset"] if events else None
            page = await self.read.timeline(run_id, after_offset=after, limit=1000)
            events += page
            if len(page) < 1000:
                return events

    async def _refuse_closed(self, approval: dict[str, Any], *, lost: bool = False) -> None:
        """Refuse deciding an approval that is decided or whose run is over."""
        approval_id = approval["approval_id"]
        if approval["status"] == "cancelled":
            run = await self.read.get_run(approval["run_id"]) or {"status": "finished"}
            raise Problem(
                409,
                "run-finished",
                "Run already finished",
                f"approval {approval_id!r} can no longer be decided: its run "
                f"{approval['run_id']!r} is {run['status']}",
                run_status=run["status"],
            )
        if approval["status"] != "pending":
            first = "another decision was recorded first" if lost else "it was already decided"
            raise Problem(
                409,
                "already-decided",
                "Approval already decided",
                f"approval {approval_id!r} cannot be decided again: {first} "
                f"({approval['decision']} by {approval['decided_by']})",
                decision=_first_decision(approval),
            )


# Events on the way to a decision that `show` lists with the decisions.
_STEPS = ("ApprovalVoted", "ApprovalEscalated")


def _needs_votes(approval: dict[str, Any]) -> bool:
    policy = approval.get("policy") or {}
    return int(policy.get("quorum", 1)) > 1 or int(policy.get("reject_quorum", 1)) > 1


def _step(event: dict[str, Any]) -> dict[str, Any]:
    """A vote or an escalation, as `show` lists it beside the decisions."""
    data = event["data"]
    return {
        "event_id": event["event_id"],
        "type": event["type"],
        **{k: v for k, v in data.items() if k not in ("run_id", "approval_id")},
        "at": event["occurred_at"],
    }


def _first_decision(approval: dict[str, Any]) -> dict[str, Any]:
    return {
        "decision": approval["decision"],
        "status": approval["status"],
        "decided_by": approval["decided_by"],
        "comments": approval["comments"],
        "decided_at": approval["decided_at"],
        "event_id": approval["decision_event_id"],
    }


def _decision(event: dict[str, Any], winner_id: str | None) -> dict[str, Any]:
    data = event["data"]
    return {
        "event_id": event["event_id"],
        "decision": data["decision"],
        "decided_by": data["decided_by"],
        "comments": data["comments"],
        "decided_at": event["occurred_at"],
        "won": event["event_id"] == winner_id,
    }
