"""The read models as hosts and the API see them: one async interface, two engines.

`PostgresReadModels` (cluster) has it natively; `ThreadedReadModels` gives it to the
synchronous `SqliteReadModels` (embedded default) by running each call in a worker
thread, so an event loop never waits on the file. Code written against
`AsyncReadModels` runs on either engine unchanged.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Self

from aob.events.log.port import TopicPartition
from aob.events.types import Event
from aob.projections.readmodels.sqlite import SqliteReadModels
from aob.projections.readmodels.views import Positioned

RunsPage = tuple[list[dict[str, Any]], str | None]


class AsyncReadModels(Protocol):
    """What `SqliteReadModels` offers, awaited; see it for each method's contract."""

    async def apply(self, batch: Sequence[tuple[Positioned, Event]]) -> None: ...

    async def advance(self, positions: Mapping[TopicPartition, int]) -> None: ...

    async def offsets(self) -> dict[TopicPartition, int]: ...

    async def get_run(self, run_id: str) -> dict[str, Any] | None: ...

    async def run_summary(self, run_id: str) -> dict[str, Any] | None: ...

    async def list_runs(
        self,
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
        tenant: str | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> RunsPage: ...

    async def timeline(
        self, key: str, after_offset: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]: ...

    async def get_workflow(
        self, workflow_id: str, version: int | None = None
    ) -> dict[str, Any] | None: ...

    async def list_workflows(self, tenant: str | None = None) -> list[dict[str, Any]]: ...

    async def get_tag(self, tag: str) -> dict[str, Any] | None: ...

    async def list_tags(self, tenant: str | None = None) -> list[dict[str, Any]]: ...

    async def list_patches(self, run_id: str) -> list[dict[str, Any]]: ...

    async def get_patch(self, run_id: str, patch_id: str) -> dict[str, Any] | None: ...

    async def list_approvals(
        self, run_id: str | None = None, status: str | None = None, tenant: str | None = None
    ) -> list[dict[str, Any]]: ...

    async def get_approval(self, approval_id: str) -> dict[str, Any] | None: ...

    async def due_timers(self, now_ms: int, limit: int = 100) -> list[dict[str, Any]]: ...

    async def run_usage(self, run_id: str) -> list[dict[str, Any]]: ...

    async def spend(
        self,
        run_id: str | None = None,
        tenant: str | None = None,
        since: int | None = None,
        excluding: Sequence[str] = (),
    ) -> dict[str, Any]: ...

    async def usage_recorded(self, event_ids: Sequence[str]) -> set[str]: ...

    async def run_budget(self, run_id: str) -> dict[str, Any] | None: ...

    async def dump(self) -> dict[str, list[tuple[Any, ...]]]: ...

    async def close(self) -> None: ...


class ThreadedReadModels:
    """`SqliteReadModels` behind `AsyncReadModels`; the store's lock already makes it
    safe to call from several threads."""

    def __init__(self, store: SqliteReadModels) -> None:
        self.store = store

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> Self:
        return cls(await asyncio.to_thread(SqliteReadModels.open, path))

    async def apply(self, batch: Sequence[tuple[Positioned, Event]]) -> None:
        await asyncio.to_thread(self.store.apply, batch)

    async def advance(self, positions: Mapping[TopicPartition, int]) -> None:
        await asyncio.to_thread(self.store.advance, positions)

    async def offsets(self) -> dict[TopicPartition, int]:
        return await asyncio.to_thread(self.store.offsets)

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.store.get_run, run_id)

    async def run_summary(self, run_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.store.run_summary, run_id)

    async def list_runs(
        self,
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
        tenant: str | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> RunsPage:
        return await asyncio.to_thread(
            self.store.list_runs, status, workflow_id, limit, before, tenant, since, until
        )

    async def timeline(
        self, key: str, after_offset: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.timeline, key, after_offset, limit)

    async def get_workflow(
        self, workflow_id: str, version: int | None = None
    ) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.store.get_workflow, workflow_id, version)

    async def list_workflows(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.list_workflows, tenant)

    async def get_tag(self, tag: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.store.get_tag, tag)

    async def list_tags(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.list_tags, tenant)

    async def list_patches(self, run_id: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.list_patches, run_id)

    async def get_patch(self, run_id: str, patch_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.store.get_patch, run_id, patch_id)

    async def list_approvals(
        self, run_id: str | None = None, status: str | None = None, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.list_approvals, run_id, status, tenant)

    async def get_approval(self, approval_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.store.get_approval, approval_id)

    async def due_timers(self, now_ms: int, limit: int = 100) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.due_timers, now_ms, limit)

    async def run_usage(self, run_id: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.run_usage, run_id)

    async def spend(
        self,
        run_id: str | None = None,
        tenant: str | None = None,
        since: int | None = None,
        excluding: Sequence[str] = (),
    ) -> dict[str, Any]:
        return await asyncio.to_thread(self.store.spend, run_id, tenant, since, excluding)

    async def usage_recorded(self, event_ids: Sequence[str]) -> set[str]:
        return await asyncio.to_thread(self.store.usage_recorded, event_ids)

    async def run_budget(self, run_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.store.run_budget, run_id)

    async def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        return await asyncio.to_thread(self.store.dump)

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)
