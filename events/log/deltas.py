"""Live output deltas: the short-retention stream beside the durable log.

While an agent node runs, its model's tokens and tool-call steps are published as
*deltas*: small JSON records keyed by run id. They are not events: nothing folds
them, audit does not replay them and they never enter `aob.runs`. What the durable
log keeps of an agent attempt is what it kept before streaming existed (the node's
outcome with the final answer, and `AgentUsageRecorded` with the tool calls and the
usage); deltas only let a watcher see that output being written.

This module is the port (`DeltaSink`, what a worker publishes to) and the in-memory
adapter every API process reads from (`DeltaStore`): a bounded ring of recent deltas
per run, numbered by position, that subscribers resume from. In the embedded default
the agent worker publishes straight into the store; in a cluster the worker
publishes to a Kafka topic with a short `retention.ms` and each API process feeds
its own store from it (`aob.platform.deltas`), using the Kafka offset as position.

Everything is bounded whatever a model streams: a delta's size, the deltas and bytes
kept per run, the runs kept (least recently written first out), and each
subscriber's queue (past it the subscriber is told to reconnect and resumes from
the ring).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

# The kinds of delta: `text` (content tokens), `tool_call` (a tool call's name and an
# arguments fragment, by index), `tool_result` (a tool's result, cut), `usage` (one LLM
# call ended: its usage), `truncated` (the attempt streamed its limit; nothing more).
KINDS: Final = frozenset({"text", "tool_call", "tool_result", "usage", "truncated"})


class DeltaError(ValueError):
    """A record that is not a delta."""


@dataclass(frozen=True, slots=True)
class Delta:
    """One piece of a running agent attempt's output."""

    run_id: str
    node_id: str
    iteration: int
    attempt: int
    kind: str
    data: dict[str, Any]

    def encode(self) -> bytes:
        return json.dumps(
            {
                "run_id": self.run_id,
                "node_id": self.node_id,
                "iteration": self.iteration,
                "attempt": self.attempt,
                "kind": self.kind,
                "data": self.data,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")

    @classmethod
    def decode(cls, value: bytes) -> Delta:
        try:
            raw = json.loads(value)
            delta = cls(
                str(raw["run_id"]),
                str(raw["node_id"]),
                int(raw["iteration"]),
                int(raw["attempt"]),
                str(raw["kind"]),
                dict(raw["data"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise DeltaError(f"not a delta: {error}") from None
        if delta.kind not in KINDS:
            raise DeltaError(f"unknown delta kind {delta.kind!r}")
        return delta


class DeltaSink(Protocol):
    """Where a worker publishes deltas (best effort: a lost delta loses no state)."""

    async def publish(self, deltas: Sequence[Delta]) -> None: ...


@dataclass(frozen=True, slots=True)
class DeltaBounds:
    """The store's memory bounds (settings `AOB_DELTA_*`)."""

    ring: int = 1000  # deltas kept per run
    run_bytes: int = 256 * 1024  # bytes of deltas kept per run
    runs: int = 256  # runs whose deltas are kept (least recently written out first)
    queue: int = 2000  # deltas waiting for one subscriber before it must reconnect


@dataclass(frozen=True, slots=True)
class StoredDelta:
    position: int  # increasing within a run; the Kafka offset in a cluster
    delta: Delta
    size: int  # encoded bytes, what the run's byte bound counts


class DeltaSubscription:
    """One subscriber's deltas of one run: `backlog` (retained, after the position it
    asked for), then `take` as they arrive."""

    __slots__ = ("backlog", "closed", "items", "limit", "overflowed", "run_id", "wakeup")

    def __init__(self, run_id: str, backlog: list[StoredDelta], limit: int) -> None:
        self.run_id = run_id
        self.backlog = backlog
        self.items: deque[StoredDelta] = deque()
        self.limit = limit
        self.overflowed = False
        self.closed = False
        self.wakeup = asyncio.Event()

    def push(self, item: StoredDelta) -> None:
        if len(self.items) >= self.limit:
            self.overflowed = True
        else:
            self.items.append(item)
        self.wakeup.set()

    def take(self) -> list[StoredDelta]:
        """What arrived since the last take (without waiting; see `wakeup`)."""
        self.wakeup.clear()
        batch = list(self.items)
        self.items.clear()
        return batch


@dataclass
class _Ring:
    items: deque[StoredDelta] = field(default_factory=deque)
    bytes: int = 0


class DeltaStore:
    """Recent deltas per run, in memory, and their live subscribers.

    `epoch` names this store's numbering: positions it numbers itself (embedded) mean
    nothing to another process, so a cursor from another epoch resumes from the
    oldest retained delta. A store fed from Kafka numbers by offset: its epoch is
    fixed, and every API process of a cluster understands every cursor.
    """

    def __init__(self, bounds: DeltaBounds | None = None, *, epoch: str | None = None) -> None:
        self.bounds = bounds or DeltaBounds()
        self.epoch = epoch or secrets.token_hex(4)
        self._rings: OrderedDict[str, _Ring] = OrderedDict()
        self._subs: dict[str, set[DeltaSubscription]] = {}
        self._next = 0
        self.dropped_subscribers = 0

    # --- writing -----------------------------------------------------------------------

    async def publish(self, deltas: Sequence[Delta]) -> None:
        """The embedded worker's sink: numbered here, in the order published."""
        for delta in deltas:
            self.add(delta)

    def add(self, delta: Delta, position: int | None = None, size: int | None = None) -> None:
        """Keep `delta` (at `position`, else the next of this store's own numbers) and
        hand it to the run's subscribers. No await: subscribing sees it exactly once."""
        if position is None:
            position = self._next
        self._next = max(self._next, position + 1)
        stored = StoredDelta(position, delta, size if size is not None else len(delta.encode()))
        ring = self._ring(delta.run_id)
        if ring.items and position <= ring.items[-1].position:
            return  # a redelivered record (a feed that re-read part of its topic)
        ring.items.append(stored)
        ring.bytes += stored.size
        while ring.items and (
            len(ring.items) > self.bounds.ring or ring.bytes > self.bounds.run_bytes
        ):
            ring.bytes -= ring.items.popleft().size
        for sub in list(self._subs.get(delta.run_id, ())):
            sub.push(stored)
            if sub.overflowed:
                self.dropped_subscribers += 1
                self.unsubscribe(sub)

    def _ring(self, run_id: str) -> _Ring:
        ring = self._rings.get(run_id)
        if ring is None:
            ring = self._rings[run_id] = _Ring()
            while len(self._rings) > self.bounds.runs:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(run_id)
        return ring

    # --- reading -----------------------------------------------------------------------

    def retained(self, run_id: str) -> list[StoredDelta]:
        ring = self._rings.get(run_id)
        return list(ring.items) if ring else []

    def subscribe(self, run_id: str, after: int | None, epoch: str | None) -> DeltaSubscription:
        """Subscribe to `run_id`'s deltas after position `after` (None: every retained
        one; another epoch's position: likewise). Registration and backlog are taken in
        one step, so nothing is missed or repeated between them."""
        if epoch != self.epoch:
            after = None
        backlog = [d for d in self.retained(run_id) if after is None or d.position > after]
        sub = DeltaSubscription(run_id, backlog, self.bounds.queue)
        self._subs.setdefault(run_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: DeltaSubscription) -> None:
        sub.closed = True
        sub.wakeup.set()
        subs = self._subs.get(sub.run_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.run_id]

    def close(self) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                self.unsubscribe(sub)

    @property
    def stats(self) -> dict[str, int]:
        return {
            "runs": len(self._rings),
            "deltas": sum(len(r.items) for r in self._rings.values()),
            "bytes": sum(r.bytes for r in self._rings.values()),
            "subscribers": sum(len(s) for s in self._subs.values()),
        }
