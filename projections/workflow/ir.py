"""The compiled form of a workflow definition that the coordinator folds over.

`compile_workflow` (in `compiler.py`) builds a `WorkflowIR` from a validated
definition. The IR is immutable and holds everything the fold needs to route
tokens: forward edges (a DAG), declared loop back-edges, joins, retry policies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

JoinMode = Literal["all", "any"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`max_attempts` counts the first try. Backoff grows by `multiplier` per retry."""

    max_attempts: int = 1
    initial_backoff_ms: int = 1000
    multiplier: float = 2.0
    max_backoff_ms: int = 60_000

    def backoff_ms(self, failed_attempt: int) -> int:
        """Delay before the attempt after `failed_attempt` (1-based)."""
        delay = self.initial_backoff_ms * self.multiplier ** (failed_attempt - 1)
        return int(min(delay, self.max_backoff_ms))


@dataclass(frozen=True, slots=True)
class NodeSpec:
    id: str
    type: str
    config: dict[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = RetryPolicy()
    timeout_ms: int | None = None
    join: JoinMode = "all"
    # Ids of the nodes whose outputs the node's task carries (None: every output):
    # what its jq programs and templates can read, so tasks do not copy the run.
    reads: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class EdgeSpec:
    """`when` is a jq expression; the edge is taken when it yields a truthy value.

    A loop edge (`max_iterations` set) is a back-edge: taking it starts the next
    iteration of the loop body (`target` .. `source`), at most `max_iterations` times.
    """

    source: str
    target: str
    when: str | None = None
    max_iterations: int | None = None
    reads: frozenset[str] | None = None  # the outputs `when` can read (None: all)
    # A loop whose `when` still holds at max_iterations: "continue" warns, "fail" fails.
    on_limit: str = "continue"

    @property
    def is_loop(self) -> bool:
        return self.max_iterations is not None


@dataclass(frozen=True, slots=True)
class WorkflowIR:
    """A compiled workflow.

    `incoming`/`outgoing` index the forward edges only (loop edges excluded), so
    they always form a DAG. `loops` are the back-edges, `loop_bodies` maps a loop
    edge's index in `loops` to the node ids it re-runs. `order` is a topological
    order of the nodes. `output` is an optional jq expression for the run output.
    """

    name: str
    nodes: dict[str, NodeSpec]
    incoming: dict[str, tuple[EdgeSpec, ...]]
    outgoing: dict[str, tuple[EdgeSpec, ...]]
    loops: tuple[EdgeSpec, ...]
    loop_bodies: tuple[frozenset[str], ...]
    order: tuple[str, ...]
    output: str | None = None
    output_reads: frozenset[str] | None = None  # the outputs `output` can read (None: all)

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(n for n in self.order if not self.incoming[n])

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(n for n in self.order if not self.outgoing[n])
