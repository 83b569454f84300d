"""The composition root: the log, the read models and the hosts one service runs.

The settings choose the stores: Kafka when `AOB_KAFKA_BOOTSTRAP` is set, else the
embedded SQLite log; PostgreSQL read models when `AOB_DATABASE_URL` is set, else a
SQLite file. The role chooses the hosts:

- `dev`: everything in one process (the embedded default, `aob server dev`);
- `api`: no host; the HTTP API (and its stream endpoints) reads the read models;
- `coordinator`: the coordinator fold and the timer service, which fires the timers of
  the runs whose partitions the coordinator owns. Coordinators share the partitions of
  `aob.runs` through the consumer group `aob-coordinator` (run as many as needed); run
  states are restored per partition from the compacted changelog
  `aob.coordinator.state` when a partition is assigned, not from history;
- `projector`: feeds the read models (projectors share the partitions through their
  consumer group; per-partition positions in the store keep them idempotent), and
  decides workflow versions and tag moves (`WorkflowDecider`: the single writer of
  each `aob.workflows` partition);
- `workers`: built-in, http, hitl and agent workers (`AOB_WORKERS` picks among them);
- `fanout`: no host; only the stream endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from aob.events.blobs import BlobStore, FileBlobStore, PostgresBlobStore
from aob.events.log.bounded import BoundedEventLog
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import EventLog
from aob.events.log.prefixed import PrefixedEventLog
from aob.events.log.sqlite import SqliteEventLog
from aob.events.types import (
    DEADLETTER_TOPIC,
    EXPRESSIONS_TOPIC,
    RUNS_TOPIC,
    TOOLS_TOPIC,
    WORKFLOWS_TOPIC,
    task_topic,
)
from aob.platform.budgets import budget_guard, model_prices
from aob.platform.deltas import LiveDeltas
from aob.platform.settings import SERVICES, Settings, service_problem
from aob.projections.readmodels.inplace import InPlaceReadModels
from aob.projections.readmodels.port import AsyncReadModels
from aob.projections.readmodels.postgres import PostgresReadModels
from aob.projections.readmodels.views import DEFAULT_TENANT
from aob.projections.runtime.changelog import create_changelog
from aob.projections.runtime.coordinator import CoordinatorHost
from aob.projections.runtime.decider import WorkflowDecider
from aob.projections.runtime.projector import ProjectorHost, ReadYourWrites
from aob.projections.runtime.timers import TimerService
from aob.workers.agent import (
    AgentDefaults,
    AgentRunner,
    AgentServices,
    GuardedFetch,
    LlmClients,
    ToolCatalog,
)
from aob.workers.agent.config import NamedEndpoint
from aob.workers.agent.llm import LivePublisher
from aob.workers.builtin import BUILTIN_TYPES, WORKER_TYPES
from aob.workers.evaluator import ExpressionEvaluator
from aob.workers.hitl import HitlService
from aob.workers.host import WorkerHost
from aob.workers.http import HttpWorker, HttpWorkerSettings
from aob.workers.inline import InlineWork
from aob.workers.outputs import OutputStore
from aob.workers.sandbox import SandboxSettings, close_shared_sandbox

log = logging.getLogger(__name__)

_RUN_TENANT_POLLS: Final = 100  # x 50 ms: how long an agent waits for its run's row

ROLES: Final = SERVICES
# Roles whose process serves the HTTP API (all of it, or only its streams).
API_ROLES: Final = frozenset({"dev", "api", "fanout"})


class ConfigError(ValueError):
    """Settings a service cannot run with; the message says what to change."""


@dataclass
class Engine:
    settings: Settings
    role: str
    log: EventLog
    read_models: AsyncReadModels
    # Read-your-writes: waits until the read models include given log positions.
    projected: ReadYourWrites
    tools: ToolCatalog
    # Where outputs too large to travel in events are kept (content addressed).
    blobs: BlobStore
    projector: ProjectorHost | None = None
    decider: WorkflowDecider | None = None
    coordinator: CoordinatorHost | None = None
    timers: TimerService | None = None
    workers: list[WorkerHost] = field(default_factory=list)
    hitl: HitlService | None = None
    agent: AgentRunner | None = None
    http: HttpWorker | None = None
    evaluator: ExpressionEvaluator | None = None
    # Live agent output (token deltas): its store and publisher, see aob.platform.deltas.
    deltas: LiveDeltas | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when a host task dies: the server then exits non-zero (aob.platform.serve).
    died: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def known_types(self) -> list[str]:
        """Node types a run can execute; others complete as skipped with a warning."""
        builtin = [t.name for t in BUILTIN_TYPES]
        return sorted({*builtin, *WORKER_TYPES, *self.settings.node_types})

    @property
    def cluster(self) -> bool:
        return self.settings.kafka_bootstrap is not None

    @classmethod
    async def open(cls, settings: Settings, role: str = "dev") -> Engine:
        """Connect the stores the settings name and assemble the hosts of `role`."""
        check_role(settings, role)
        event_log = await open_log(settings, role)
        try:
            await create_topics(event_log, settings)
            read_models = await open_read_models(settings)
        except BaseException:
            await event_log.close()
            raise
        try:
            blobs = await open_blobs(settings)
        except BaseException:
            await event_log.close()
            await read_models.close()
            raise
        return cls._assemble(settings, role, event_log, read_models, blobs)

    @classmethod
    def _assemble(
        cls,
        settings: Settings,
        role: str,
        event_log: EventLog,
        read_models: AsyncReadModels,
        blobs: BlobStore,
    ) -> Engine:
        projector = ProjectorHost(event_log, read_models) if role in ("dev", "projector") else None
        engine = cls(
            settings=settings,
            role=role,
            log=event_log,
            read_models=read_models,
            projected=ReadYourWrites(event_log, read_models, projector),
            tools=ToolCatalog(),
            blobs=blobs,
            projector=projector,
        )
        if projector is not None:  # the workflow registry's writer: see the module doc
            engine.decider = WorkflowDecider(event_log)
        if role in ("dev", "coordinator"):
            engine.coordinator = CoordinatorHost(
                event_log, max_event_bytes=settings.max_event_bytes, inline=inline_work(settings)
            )
            coordinator = engine.coordinator
            engine.timers = TimerService(
                event_log, read_models, owns=coordinator.owns, append=coordinator.append_owned
            )
        engine.deltas = LiveDeltas(
            settings,
            serves_streams=role in API_ROLES,
            runs_agents=role in ("dev", "workers") and "agent" in settings.workers,
        )
        if role in ("dev", "workers"):
            engine._add_workers(settings.workers)
        return engine

    def _add_workers(self, kinds: list[str]) -> None:
        outputs = OutputStore(self.blobs, self.settings.output_inline_bytes)
        if "builtin" in kinds:
            self.workers += [
                WorkerHost(self.log, t, worker_id="builtin", outputs=outputs) for t in BUILTIN_TYPES
            ]
            self.evaluator = ExpressionEvaluator(self.log, outputs)
        if "http" in kinds:
            self.http = HttpWorker(HttpWorkerSettings())
            http_type = self.http.node_type()
            self.workers.append(WorkerHost(self.log, http_type, worker_id="http", outputs=outputs))
        if "agent" in kinds:
            live = self.deltas.publisher if self.deltas is not None else None
            self.agent = _agent_runner(
                self.settings, self.log, self.read_models, self.tools, self.blobs, live
            )
            agent = WorkerHost(self.log, self.agent.node_type(), worker_id="agent", outputs=outputs)
            self.workers.append(agent)
        if "hitl" in kinds:
            self.hitl = HitlService(self.log, self.read_models)

    @property
    def follows_tools(self) -> bool:
        """The API registers and lists tools; agents call them."""
        return self.role in API_ROLES or self.agent is not None

    async def start(self) -> None:
        """Recover every host from its committed position, then run them."""
        if self.deltas is not None:
            await self.deltas.start()
        if self.projector is not None:
            await self.projector.start()
        if self.decider is not None:
            await self.decider.start()
        if self.coordinator is not None:
            await self.coordinator.recover()
        for worker in self.workers:
            await worker.start()
        if self.evaluator is not None:
            await self.evaluator.start()
        if self.hitl is not None:
            await self.hitl.start()
        if self.follows_tools:
            await self.tools.catch_up(self.log)
            self._spawn(self.tools.follow(self.log, self._stop))
        if self.projector is not None:
            self._spawn(self.projector.run(self._stop))
        if self.decider is not None:
            self._spawn(self.decider.run(self._stop))
        if self.coordinator is not None:
            self._spawn(self.coordinator.run(self._stop))
        if self.timers is not None:
            self._spawn(self.timers.run(self._stop))
        if self.hitl is not None:
            self._spawn(self.hitl.run(self._stop))
        if self.evaluator is not None:
            self._spawn(self.evaluator.run(self._stop))
        for worker in self.workers:
            self._spawn(worker.run(self._stop))

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        name = getattr(job, "__qualname__", "host")  # e.g. CoordinatorHost.run
        task = asyncio.create_task(job, name=name)
        task.add_done_callback(self._on_host_done)
        self._tasks.append(task)

    def _on_host_done(self, task: asyncio.Task[None]) -> None:
        """A host that ends before it is asked to has died: the service is unhealthy,
        and `died` tells the server to exit so that a supervisor restarts it."""
        if self._stop.is_set() and (task.cancelled() or task.exception() is None):
            return
        why = self._why(task)
        if why is not None:
            error = None if task.cancelled() else task.exception()
            log.critical(
                "host %s died: %s; the service stops", task.get_name(), why, exc_info=error
            )
            self.died.set()

    def _why(self, task: asyncio.Task[None]) -> str | None:
        if not task.done():
            return None
        if task.cancelled():
            return None if self._stop.is_set() else "cancelled"
        error = task.exception()
        if error is not None:
            return repr(error)
        return None if self._stop.is_set() else "returned before the service stopped"

    @property
    def crashed(self) -> list[str]:
        """Hosts that stopped with an error, or before the service stopped (it is
        then unhealthy, and exits: see `died`)."""
        return [
            f"{task.get_name()}: {why}"
            for task in self._tasks
            if (why := self._why(task)) is not None
        ]

    def request_stop(self) -> None:
        """Ask every host to stop at its next step; `stop` waits for them."""
        self._stop.set()

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task  # a crash was logged when it happened
        if self.deltas is not None:
            await self.deltas.stop()
        await self.projected.close()
        await close_shared_sandbox()  # the jq sandbox's child processes
        if self.agent is not None:
            await self.agent.aclose()
        if self.http is not None:
            await self.http.aclose()
        try:
            await self.log.close()
        finally:
            await self.read_models.close()
            if isinstance(self.blobs, PostgresBlobStore):
                await self.blobs.close()

    async def dependencies(self) -> dict[str, str]:
        """Whether the log and the read models answer: "ok", or the error."""
        found = {"event_log": "ok", "read_models": "ok"}
        try:
            await self.log.end_offsets(RUNS_TOPIC)
        except Exception as error:
            found["event_log"] = f"error: {error}"
        try:
            await self.read_models.offsets()
        except Exception as error:
            found["read_models"] = f"error: {error}"
        if self.crashed:
            found["hosts"] = "error: " + "; ".join(self.crashed)
        return found


def check_role(settings: Settings, role: str) -> None:
    """Refuse a role the settings cannot serve, saying why."""
    problem = service_problem(settings, role)
    if problem is not None:
        raise ConfigError(problem)


async def open_log(settings: Settings, role: str) -> EventLog:
    """Kafka when the settings name a cluster, else the embedded log in the data dir."""
    event_log: EventLog
    if settings.kafka_bootstrap:
        event_log = await KafkaEventLog.open(
            settings.kafka_bootstrap,
            client_id=f"aob-{role}",
            poll_interval=settings.kafka_poll_interval,
        )
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        event_log = await SqliteEventLog.open(
            settings.data_dir / "log.db", synchronous=settings.log_synchronous
        )
    if settings.topic_prefix:
        event_log = PrefixedEventLog(event_log, settings.topic_prefix)
    return BoundedEventLog(event_log, settings.max_event_bytes)


async def open_blobs(settings: Settings) -> BlobStore:
    """Where large outputs live: shared through PostgreSQL in a cluster (every service
    reads what any worker stored), else a directory in the data dir."""
    if settings.database_url:
        return await PostgresBlobStore.open(settings.database_url.get_secret_value())
    return FileBlobStore(settings.data_dir / "blobs")


async def open_read_models(settings: Settings) -> AsyncReadModels:
    """PostgreSQL when the settings name a database, else a SQLite file in the data dir."""
    if settings.database_url:
        return await PostgresReadModels.open(
            settings.database_url.get_secret_value(), max_size=settings.database_pool_size
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return await InPlaceReadModels.open(settings.data_dir / "readmodels.db")


def inline_work(settings: Settings) -> InlineWork | None:
    """What the coordinator decides in process (simple transforms and expressions),
    unless `inline_simple_work` is off."""
    if not settings.inline_simple_work:
        return None
    return InlineWork(SandboxSettings(), settings.output_inline_bytes)


def _agent_runner(
    settings: Settings,
    event_log: EventLog,
    read_models: AsyncReadModels,
    tools: ToolCatalog,
    blobs: BlobStore,
    live: LivePublisher | None = None,
) -> AgentRunner:
    """Agent nodes: the LLM endpoint and limits from settings; outbound HTTP through the
    HTTP worker's guard, without its secrets (a model writes these requests); large
    answers in the engine's blob store (shared by every process of a cluster)."""
    defaults = AgentDefaults(
        base_url=settings.llm_base_url,
        model=settings.llm_model,
        api_key=settings.llm_api_key.get_secret_value(),
        endpoints={
            name: NamedEndpoint(
                e.base_url, e.api_key.get_secret_value(), tuple(e.models), frozenset(e.tenants)
            )
            for name, e in settings.llm_endpoints.items()
        },
        max_retries=settings.llm_max_retries,
        timeout_ms=settings.llm_timeout_ms,
        max_rounds=settings.llm_max_rounds,
        max_tokens=settings.llm_max_tokens,
        max_wall_ms=settings.llm_max_wall_ms,
        max_patch_attempts=settings.llm_max_patch_attempts,
        max_delegation_depth=settings.llm_max_delegation_depth,
        blob_threshold_bytes=settings.llm_blob_threshold_bytes,
        prices=model_prices(settings),
    )

    async def definition(run_id: str) -> dict[str, Any] | None:
        run = await read_models.get_run(run_id)
        return run["definition"] if run else None

    async def run_tenant(run_id: str) -> str | None:
        # The agent may see its task before the projector has the run: wait a little.
        for _ in range(_RUN_TENANT_POLLS):
            run = await read_models.get_run(run_id)
            if run is not None:
                return str(run.get("tenant") or DEFAULT_TENANT)
            await asyncio.sleep(0.05)
        return None

    http_settings = HttpWorkerSettings()
    http = HttpWorker(http_settings.model_copy(update={"secrets": {}}))
    services = AgentServices(
        event_log,
        defaults,
        tools,
        GuardedFetch(http),
        definition,
        run_tenants=run_tenant,
        budgets=budget_guard(settings, read_models),
    )
    return AgentRunner(
        services,
        clients=LlmClients(
            max_connections=settings.llm_max_connections, guard=http_settings.guard_policy()
        ),
        blobs=blobs,
        concurrency=settings.llm_concurrency,
        live=live,
    )


async def create_topics(event_log: EventLog, settings: Settings) -> None:
    """Every topic the services use; creating one that exists changes nothing, so any
    service may start first. Created at once: on Kafka each waits for its leaders."""
    types = {t.name for t in BUILTIN_TYPES} | set(WORKER_TYPES) | set(settings.node_types)
    topics = {
        RUNS_TOPIC: settings.runs_partitions,
        EXPRESSIONS_TOPIC: settings.tasks_partitions,
        WORKFLOWS_TOPIC: settings.workflows_partitions,
        TOOLS_TOPIC: 1,  # a small catalog, read whole by everyone
        DEADLETTER_TOPIC: 1,  # records set aside: few, read whole by admins
        **{task_topic(node_type): settings.tasks_partitions for node_type in sorted(types)},
    }
    await asyncio.gather(*(event_log.create_topic(t, n) for t, n in topics.items()))
    # The coordinator's run states: one changelog partition per partition of aob.runs
    # (as many as it has, whatever the settings say now).
    await create_changelog(event_log, await event_log.partitions(RUNS_TOPIC))
