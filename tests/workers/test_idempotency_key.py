"""http nodes send an `Idempotency-Key` that is stable per (run, node, iteration, attempt).

Against a real loopback server: the header is on every request; every execution of one
task sends the same key (two workers, and a worker process killed with kill -9 while
its request is in flight, whose task Kafka redelivers to a second process); another
attempt, iteration, node or run sends another key; a node cannot set the header.

Also the worker process of the redelivery test:

    python -m tests.workers.test_idempotency_key --bootstrap HOST:PORT --prefix P
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from aob.events.codec import decode, encode
from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append, EventLog
from aob.events.log.prefixed import PrefixedEventLog
from aob.events.types import RUNS_TOPIC, Event, NodeCompleted, NodeScheduled, task_topic
from aob.workers.host import NodeError, WorkerHost
from aob.workers.http import HttpWorker, HttpWorkerSettings
from aob.workers.http.idempotency import idempotency_key
from tests.workers.http.servers import Request, Response, Server

ROOT = Path(__file__).parents[2]
# The draft's form: a Structured Field String, i.e. in double quotes.
KEY_FORM = re.compile(r'"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"')


def _worker() -> HttpWorker:
    settings = HttpWorkerSettings(  # type: ignore[call-arg]
        _env_file=None, allow=["127.0.0.1"], ports=["1-65535"]
    )
    return HttpWorker(settings, registry=CollectorRegistry())


def _task(url: str, **changes: Any) -> NodeScheduled:
    config = {"method": "POST", "url": url, "body": {"amount": 5}}
    context = {"inputs": {}, "nodes": {}, "iteration": 0}
    task = NodeScheduled("run-7", "charge", "http", 0, 1, config, context, 10_000)
    return dataclasses.replace(task, **changes)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    running = await Server().start("127.0.0.1")
    running.route("/charge", Response(201, {"charged": True}))
    yield running
    await running.stop()


@pytest.fixture
async def worker() -> AsyncIterator[HttpWorker]:
    running = _worker()
    yield running
    await running.aclose()


def _keys(server: Server) -> list[str | None]:
    return [request.headers.get("idempotency-key") for request in server.requests]


async def test_every_request_carries_the_attempts_key(worker, server):
    task = _task(f"http://127.0.0.1:{server.port}/charge")
    output = await worker.handle(task)
    assert output["status"] == 201
    [sent] = _keys(server)
    assert sent is not None
    assert KEY_FORM.fullmatch(sent)
    assert sent == f'"{idempotency_key(task)}"'


async def test_the_same_task_on_another_worker_sends_the_same_key(worker, server):
    task = _task(f"http://127.0.0.1:{server.port}/charge")
    other = _worker()
    try:
        await worker.handle(task)
        await other.handle(task)  # a redelivery: another worker executes the same task
    finally:
        await other.aclose()
    first, second = _keys(server)
    assert first == second == f'"{idempotency_key(task)}"'


async def test_each_attempt_iteration_node_and_run_sends_its_own_key(worker, server):
    task = _task(f"http://127.0.0.1:{server.port}/charge")
    variants = [
        task,
        dataclasses.replace(task, attempt=2),
        dataclasses.replace(task, iteration=1),
        dataclasses.replace(task, iteration=1, attempt=2),
        dataclasses.replace(task, node_id="charge-2"),
        dataclasses.replace(task, run_id="run-8"),
    ]
    for variant in variants:
        await worker.handle(variant)
    keys = _keys(server)
    assert len(keys) == len(variants)
    assert None not in keys
    assert len(set(keys)) == len(variants)


async def test_the_workers_own_retries_and_redirect_hops_repeat_the_key(worker, server):
    base = f"http://127.0.0.1:{server.port}"
    server.script("/flaky", Response(503), Response(307, headers={"Location": "/charge"}))
    config = {"method": "PUT", "url": base + "/flaky", "retries": {"max": 2, "backoff_ms": 1}}
    task = dataclasses.replace(_task(base), config=config)
    output = await worker.handle(task)
    assert output["status"] == 201
    assert output["attempts"] == 2
    assert [r.path for r in server.requests] == ["/flaky", "/flaky", "/charge"]
    assert set(_keys(server)) == {f'"{idempotency_key(task)}"'}


@pytest.mark.parametrize("name", ["Idempotency-Key", "idempotency-key", "IDEMPOTENCY-KEY"])
async def test_a_node_cannot_set_the_header(worker, server, name):
    task = _task(f"http://127.0.0.1:{server.port}/charge")
    config = {**task.config, "headers": {name: "mine"}}
    with pytest.raises(NodeError) as caught:
        await worker.handle(dataclasses.replace(task, config=config))
    assert not caught.value.retryable
    assert f"config.headers: {name} is set by the worker" in str(caught.value)
    assert server.requests == []


# --- a worker killed mid-request: Kafka redelivers its task to another process ----------


async def test_a_task_in_flight_when_its_worker_is_killed_is_resent_with_its_key(
    kafka_bootstrap: str, server: Server, tmp_path: Path
) -> None:
    answer = asyncio.Event()  # the first request hangs until its worker is dead

    async def charge(request: Request) -> Response:
        if len(server.requests) == 1:
            await answer.wait()
        return Response(201, {"charged": True})

    server.route("/charge", charge)
    prefix = f"idem-{uuid.uuid4().hex[:8]}."
    task = _task(f"http://127.0.0.1:{server.port}/charge", run_id=str(uuid.uuid4()))
    async with await KafkaEventLog.open(kafka_bootstrap) as kafka:
        event_log = PrefixedEventLog(kafka, prefix)
        await _schedule(event_log, task)
        first = _start_worker(kafka_bootstrap, prefix, tmp_path / "first.log")
        await _until(lambda: len(server.requests) == 1, "the first worker's request", first)
        _kill_hard(first)
        answer.set()  # too late: nobody reads the first request's response any more
        second = _start_worker(kafka_bootstrap, prefix, tmp_path / "second.log")
        try:
            await _until(lambda: len(server.requests) == 2, "the redelivered request", second)
            completed = await _completion(event_log, task)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    first_key, second_key = _keys(server)
    assert first_key == second_key == f'"{idempotency_key(task)}"'
    assert completed.output["status"] == 201


async def _schedule(event_log: EventLog, task: NodeScheduled) -> None:
    await event_log.create_topic(RUNS_TOPIC, 1)
    await event_log.create_topic(task_topic("http"), 1)
    event = Event(str(uuid.uuid4()), task.run_id, int(time.time() * 1000), task)
    await event_log.append([Append(task_topic("http"), task.run_id, encode(event))])


def _start_worker(bootstrap: str, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    module = "tests.workers.test_idempotency_key"
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, "--bootstrap", bootstrap, "--prefix", prefix],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _kill_hard(process: subprocess.Popen[bytes]) -> None:
    """kill -9: no shutdown code runs, nothing is flushed or committed."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


async def _until(
    condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 90  # a new group member may wait out the dead one
    while not condition():
        assert process.poll() is None, f"the worker exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within 90 s"
        await asyncio.sleep(0.05)


async def _completion(event_log: EventLog, task: NodeScheduled) -> NodeCompleted:
    """The task's NodeCompleted on the runs topic, once it is there."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for record in await event_log.read(RUNS_TOPIC, 0, 0, 1000):
            payload = decode(record.value).payload
            if isinstance(payload, NodeCompleted) and payload.run_id == task.run_id:
                return payload
        await event_log.wait_for_append(1.0)
    raise AssertionError("the redelivered task's outcome was not appended within 60 s")


async def _serve(bootstrap: str, prefix: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    worker = _worker()
    async with await KafkaEventLog.open(bootstrap) as kafka:
        host = WorkerHost(PrefixedEventLog(kafka, prefix), worker.node_type(), worker_id="http")
        await host.start()
        await host.run(stop)
    await worker.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    arguments = parser.parse_args()
    asyncio.run(_serve(arguments.bootstrap, arguments.prefix))
