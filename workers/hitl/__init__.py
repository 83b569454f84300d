"""Human approvals (`hitl` nodes): the service that asks, times out and resolves them."""

from aob.workers.hitl.decision import (
    DECISIONS,
    TIMEOUT_DECIDER,
    node_outcome,
    refusal,
    self_approval_refusal,
)
from aob.workers.hitl.service import HitlService, approval_id_for

__all__ = [
    "DECISIONS",
    "TIMEOUT_DECIDER",
    "HitlService",
    "approval_id_for",
    "node_outcome",
    "refusal",
    "self_approval_refusal",
]
