"""The embedded default, assembled: one process, one log file, one read-model file.

Wires the event log, read models and every host (coordinator, projector, timer
service, built-in workers) and runs them as tasks of one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aob.events.blobs import FileBlobStore
from aob.events.log.port import EventLog
from aob.events.log.sqlite import SqliteEventLog
from aob.events.types import RUNS_TOPIC, TOOLS_TOPIC, WORKFLOWS_TOPIC, task_topic
from aob.platform.settings import Settings
from aob.projections.readmodels.sqlite import SqliteReadModels
from aob.projections.runtime.coordinator import CoordinatorHost
from aob.projections.runtime.projector import ProjectorHost
from aob.projections.runtime.timers import TimerService
from aob.workers.agent import (
    AgentDefaults,
    AgentRunner,
    AgentServices,
    GuardedFetch,
    LlmClients,
    ToolCatalog,
)
from aob.workers.builtin import BUILTIN_TYPES, WORKER_TYPES
from aob.workers.hitl import HitlService
from aob.workers.host import WorkerHost
from aob.workers.http import HttpWorker, HttpWorkerSettings

log = logging.getLogger(__name__)


@dataclass
class Engine:
    settings: Settings
    log: EventLog
    read_models: SqliteReadModels
    projector: ProjectorHost
    coordinator: CoordinatorHost
    timers: TimerService
    workers: list[WorkerHost]
    hitl: HitlService
    agent: AgentRunner
    tools: ToolCatalog
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def known_types(self) -> list[str]:
        """Node types a run can execute; others complete as skipped with a warning."""
        builtin = [t.name for t in BUILTIN_TYPES]
        return sorted({*builtin, *WORKER_TYPES, *self.settings.node_types})

    @classmethod
    async def open(cls, settings: Settings) -> Engine:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        event_log = await SqliteEventLog.open(
            settings.data_dir / "log.db", synchronous=settings.log_synchronous
        )
        await create_topics(event_log, settings)
        read_models = SqliteReadModels.open(settings.data_dir / "readmodels.db")
        tools = ToolCatalog()
        agent = _agent_runner(settings, event_log, read_models, tools)
        return cls(
            settings=settings,
            log=event_log,
            read_models=read_models,
            projector=ProjectorHost(event_log, read_models),
            coordinator=CoordinatorHost(event_log),
            timers=TimerService(event_log, read_models),
            workers=[
                *(WorkerHost(event_log, t, worker_id="builtin") for t in BUILTIN_TYPES),
                WorkerHost(event_log, agent.node_type(), worker_id="agent"),
            ],
            hitl=HitlService(event_log, read_models),
            agent=agent,
            tools=tools,
        )

    async def start(self) -> None:
        """Recover every host from its committed position, then run them."""
        await self.projector.start()
        await self.coordinator.recover()
        for worker in self.workers:
            await worker.start()
        await self.hitl.start()
        await self.tools.catch_up(self.log)
        self._spawn(self.projector.run(self._stop))
        self._spawn(self.tools.follow(self.log, self._stop))
        self._spawn(self.coordinator.run(self._stop))
        self._spawn(self.timers.run(self._stop))
        self._spawn(self.hitl.run(self._stop))
        for worker in self.workers:
            self._spawn(worker.run(self._stop))

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        task.add_done_callback(_report_crash)
        self._tasks.append(task)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.agent.aclose()
        await self.log.close()
        self.read_models.close()


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("engine task crashed", exc_info=task.exception())


def _agent_runner(
    settings: Settings, event_log: EventLog, read_models: SqliteReadModels, tools: ToolCatalog
) -> AgentRunner:
    """Agent nodes: the LLM endpoint and limits from settings; outbound HTTP through the
    HTTP worker's guard, without its secrets (a model writes these requests)."""
    defaults = AgentDefaults(
        base_url=settings.llm_base_url,
        model=settings.llm_model,
        api_key=settings.llm_api_key.get_secret_value(),
        api_keys={k: v.get_secret_value() for k, v in settings.llm_api_keys.items()},
        max_retries=settings.llm_max_retries,
        timeout_ms=settings.llm_timeout_ms,
        max_rounds=settings.llm_max_rounds,
        max_tokens=settings.llm_max_tokens,
        max_wall_ms=settings.llm_max_wall_ms,
        max_patch_attempts=settings.llm_max_patch_attempts,
        max_delegation_depth=settings.llm_max_delegation_depth,
        blob_threshold_bytes=settings.llm_blob_threshold_bytes,
    )

    async def definition(run_id: str) -> dict[str, Any] | None:
        run = read_models.get_run(run_id)
        return run["definition"] if run else None

    http = HttpWorker(HttpWorkerSettings().model_copy(update={"secrets": {}}))
    services = AgentServices(event_log, defaults, tools, GuardedFetch(http), definition)
    return AgentRunner(
        services,
        clients=LlmClients(max_connections=settings.llm_max_connections),
        blobs=FileBlobStore(settings.data_dir / "blobs"),
        concurrency=settings.llm_concurrency,
    )


async def create_topics(event_log: EventLog, settings: Settings) -> None:
    await event_log.create_topic(RUNS_TOPIC, settings.runs_partitions)
    await event_log.create_topic(WORKFLOWS_TOPIC, settings.workflows_partitions)
    await event_log.create_topic(TOOLS_TOPIC, 1)  # a small catalog, read whole by everyone
    types = {t.name for t in BUILTIN_TYPES} | set(WORKER_TYPES) | set(settings.node_types)
    for node_type in sorted(types):
        await event_log.create_topic(task_topic(node_type), settings.tasks_partitions)
