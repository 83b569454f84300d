"""A scaled-out cluster: several instances of every service, each its own
`python -m aob.platform <service>` process, on a Kafka broker of the package's own
(the tests restart it) and a fresh PostgreSQL schema.

`ScaledCluster` names instances `<role>-<n>` ("workers-2"), kills them with `kill -9`
and starts them again; `CountingServer` is the outside world the http nodes call: it
records every request with its `Idempotency-Key` and the process that sent it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aob.infra.kafka import RESTART_SESSION_TIMEOUT_MS, KafkaBroker
from tests.cluster_services.conftest import LISTENING, START_TIMEOUT, cluster_env
from tests.fixtures.postgres import PostgresSchemas

# What the workflows of these tests need: partitions enough for every instance to own
# some, http calls to the counting server only, no agent worker (no LLM here).
SCALED_SETTINGS = {
    "AOB_RUNS_PARTITIONS": "4",
    "AOB_WORKFLOWS_PARTITIONS": "2",
    "AOB_TASKS_PARTITIONS": "3",
    "AOB_WORKERS": '["builtin", "http", "hitl"]',
}


# --- the broker -------------------------------------------------------------------------


@dataclass
class Broker:
    """The package's broker; `restart` keeps its data and its bootstrap address."""

    current: KafkaBroker

    @property
    def bootstrap(self) -> str:
        return self.current.bootstrap

    def restart(self) -> None:
        self.current = self.current.restart(die_with_parent=True)


@pytest.fixture(scope="package")
def scaled_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(
        KafkaBroker.start(
            tmp_path_factory.mktemp("scaled-kafka"),
            die_with_parent=True,
            session_timeout_ms=RESTART_SESSION_TIMEOUT_MS,  # the chaos test restarts it
        )
    )
    try:
        yield broker
    finally:
        broker.current.stop()


# --- the services -----------------------------------------------------------------------


@dataclass
class Instance:
    name: str  # <role>-<n>
    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    @property
    def role(self) -> str:
        return self.name.rsplit("-", 1)[0]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class ScaledCluster:
    """Service instances started in `directory` with `env`; all stopped at teardown."""

    directory: Path
    env: dict[str, str]
    instances: dict[str, Instance] = field(default_factory=dict)
    killed: set[int] = field(default_factory=set)  # pids ended by kill -9
    started: dict[str, set[int]] = field(default_factory=dict)  # pids by role, ever
    _generation: dict[str, int] = field(default_factory=dict)

    def start(self, *names: str) -> None:
        """Start the instances at once (again, for killed ones), then wait until each
        listens."""
        for name in names:
            self._spawn(name)
        for name in names:
            self.instances[name].url = self._listening(self.instances[name])

    def kill(self, name: str) -> int:
        """kill -9 an instance: nothing is flushed, committed or left cleanly."""
        process = self.instances[name].process
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        self.killed.add(process.pid)
        return process.pid

    def url(self, name: str) -> str:
        return self.instances[name].url

    def pids(self, role: str) -> set[int]:
        """Pids of `role`'s instances, past (killed) and present."""
        return set(self.started.get(role, set()))

    def running(self, role: str) -> list[str]:
        return [
            name
            for name, i in sorted(self.instances.items())
            if i.role == role and i.process.poll() is None
        ]

    def exited(self) -> dict[str, int]:
        """Instances that ended although nobody killed them, with their exit codes."""
        return {
            name: code
            for name, i in self.instances.items()
            if (code := i.process.poll()) is not None and i.process.pid not in self.killed
        }

    def stop(self) -> dict[str, int]:
        """SIGTERM every instance; their exit codes."""
        for instance in self.instances.values():
            if instance.process.poll() is None:
                instance.process.send_signal(signal.SIGTERM)
        codes = {}
        for name, instance in self.instances.items():
            try:
                codes[name] = instance.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                instance.process.kill()
                codes[name] = instance.process.wait()
        return codes

    def logs(self, lines: int = 30) -> str:
        """Every log's tail (killed instances' logs too), for failure messages."""
        tails = []
        for log in sorted(self.directory.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {log.name}")
            tails.extend(text)
        return "\n".join(tails)

    def _spawn(self, name: str) -> None:
        generation = self._generation.get(name, 0) + 1
        self._generation[name] = generation
        log = self.directory / f"{name}.{generation}.log"
        role = name.rsplit("-", 1)[0]
        with log.open("wb") as out:
            process = subprocess.Popen(
                # Info: a failed run leaves the rebalances and restores in the logs.
                [sys.executable, "-m", "aob.platform", role, "--port", "0", "--log-level", "info"],
                cwd=self.directory,  # no .env of a developer's checkout
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started.setdefault(role, set()).add(process.pid)
        self.instances[name] = Instance(name, process, log)

    def _listening(self, instance: Instance) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = LISTENING.search(instance.output())
            if found:
                return found.group(1)
            if instance.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{instance.name} did not start:\n{instance.output()}")


def scaled_env(bootstrap: str, dsn: str, directory: Path, **extra: str) -> dict[str, str]:
    env = cluster_env(bootstrap, dsn, directory / "data")
    env.update(SCALED_SETTINGS)
    env.update(extra)
    return env


@pytest.fixture
def scaled_cluster(
    scaled_broker: Broker, postgres_schemas: PostgresSchemas, tmp_path: Path
) -> Iterator[ScaledCluster]:
    """No instance started yet: the test starts what it needs, with `cluster.env` as it
    wants it (the counting server's address, say)."""
    cluster = ScaledCluster(
        tmp_path, scaled_env(scaled_broker.bootstrap, postgres_schemas.create(), tmp_path)
    )
    try:
        yield cluster
    finally:
        cluster.stop()


# --- the outside world ------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    key: str  # the Idempotency-Key header, without its quotes ("" when absent)
    path: str
    pid: int | None  # the process that sent it, when one of the candidates did


class CountingServer:
    """An HTTP server on 127.0.0.1 that records every request.

    - `/count/...` answers at once;
    - `/slow/<token>` answers the first request naming `token` after `slow_seconds`
      (longer than the node's timeout, so that attempt fails) and later ones at once.
    `senders` lists the pids that may have sent a request (the workers' processes):
    each request is traced to its sender through the kernel's socket table.
    """

    def __init__(self, senders: Callable[[], set[int]], slow_seconds: float = 3.0) -> None:
        self.senders = senders
        self.slow_seconds = slow_seconds
        self.requests: list[Request] = []
        self._seen_tokens: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> CountingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def _record(self, handler: BaseHTTPRequestHandler) -> bool:
        """Record the request; whether it should be answered slowly."""
        key = handler.headers.get("Idempotency-Key", "").strip('"')
        sender = socket_owner(handler.client_address[1], self.port, self.senders())
        path = handler.path
        with self._lock:
            self.requests.append(Request(key, path, sender))
            if not path.startswith("/slow/"):
                return False
            first = path not in self._seen_tokens
            self._seen_tokens.add(path)
            return first

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if server._record(self):
                    # A slow endpoint: the node's attempt times out before this answer.
                    threading.Event().wait(server.slow_seconds)
                body = json.dumps({"path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the worker gave up, or was killed
                    self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


_TCP_LINE = re.compile(r"^\s*\d+: ([0-9A-F]{8}):([0-9A-F]{4}) ([0-9A-F]{8}):([0-9A-F]{4}) ")


def socket_owner(client_port: int, server_port: int, candidates: set[int]) -> int | None:
    """The pid among `candidates` holding the socket 127.0.0.1:client_port ->
    127.0.0.1:server_port (from /proc/net/tcp's inode and the candidates' fds)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        found = _TCP_LINE.match(line)
        if found and int(found[2], 16) == client_port and int(found[4], 16) == server_port:
            inode = line.split()[9]
            break
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return pid
            except OSError:
                continue
    return None
