"""Fixtures for the HTTP worker: loopback servers, an injected resolver, workers."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from aob.events.types import NodeScheduled
from aob.workers.http import HttpWorker, HttpWorkerSettings, ResolveError
from aob.workers.http.guard import IPAddress
from tests.workers.http.servers import Recorder, Server


class ScriptedResolver:
    """Answers from a table: name -> list of answers, one per lookup (the last repeats).
    Records every lookup."""

    def __init__(self, answers: dict[str, Sequence[Sequence[str]]]) -> None:
        self.answers = {name: [list(a) for a in seq] for name, seq in answers.items()}
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        if host not in self.answers:
            raise ResolveError(f"cannot resolve {host!r}: no such name")
        answers = self.answers[host]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        return [ipaddress.ip_address(a) for a in answer]


class RecordingSleep:
    """Records the delays the worker asks for, without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def task(
    config: Any, inputs: Any = None, nodes: Any = None, timeout_ms: int | None = None
) -> NodeScheduled:
    context = {"inputs": inputs or {}, "nodes": nodes or {}, "iteration": 0}
    return NodeScheduled("run-1", "call", "http", 0, 1, config, context, timeout_ms)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    running = await Server().start("127.0.0.1")
    yield running
    await running.stop()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    """Listens on 127.0.0.2: no test allows it, so nothing may ever connect."""
    running = await Recorder().start("127.0.0.2")
    yield running
    await running.stop()


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


WorkerFactory = Callable[..., HttpWorker]


@pytest.fixture
async def make_worker(sleep: RecordingSleep) -> AsyncIterator[WorkerFactory]:
    """Builds workers with a fresh metrics registry, a recording sleep and a fixed seed.
    Keyword arguments are settings, except resolver, ssl_context and registry."""
    workers: list[HttpWorker] = []

    def make(
        *,
        resolver: Any = None,
        ssl_context: Any = None,
        registry: CollectorRegistry | None = None,
        **settings: Any,
    ) -> HttpWorker:
        settings.setdefault("ports", ["1-65535"])
        worker = HttpWorker(
            HttpWorkerSettings(_env_file=None, **settings),  # type: ignore[call-arg]
            resolver=resolver,
            registry=registry or CollectorRegistry(),
            ssl_context=ssl_context,
            sleep=sleep,
            rng=random.Random(7),
        )
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.aclose()
