"""The coordinator: a pure fold over one run's events (`fold`, `replay`) and its state.

No clock, no randomness, no I/O: hosts (embedded or faust) feed it events and
append what it emits.
"""

from aob.projections.coordinator.fold import fold, replay
from aob.projections.coordinator.state import NodeState, NodeStatus, RunState, RunStatus

__all__ = ["NodeState", "NodeStatus", "RunState", "RunStatus", "fold", "replay"]
