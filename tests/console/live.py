"""A live `aob server dev` process and a scripted LLM endpoint, for browser tests and the
console benchmark: real subprocesses on free loopback ports, waited on by what they print."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

CHROMIUM = "/usr/bin/chromium"
START_TIMEOUT_S = 60.0
_CONSOLE_LINE = re.compile(r"web console: (http://\S+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_until(stream: IO[str], pattern: re.Pattern[str], process: subprocess.Popen[str]) -> str:
    """The first match of `pattern` in what `process` prints (its lines are kept)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise RuntimeError(f"the process exited ({process.wait()}): {''.join(seen)}")
        seen.append(line)
        if match := pattern.search(line):
            return match[1]
    raise TimeoutError(f"nothing matched {pattern.pattern!r} in: {''.join(seen)}")


@dataclass
class DevServer:
    process: subprocess.Popen[str]
    base_url: str
    console_url: str  # with the local admin's token in its fragment
    admin_token: str
    data_dir: Path
    output: threading.Thread

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=30,
        )

    def token(self, name: str, roles: list[str]) -> str:
        with self.client() as client:
            response = client.post("/api/v1/admin/tokens", json={"name": name, "roles": roles})
            response.raise_for_status()
            return str(response.json()["token"])

    def submit(self, definition: dict[str, Any], inputs: Any = None) -> str:
        with self.client() as client:
            response = client.post(
                "/api/v1/runs", json={"definition": definition, "inputs": inputs or {}}
            )
            response.raise_for_status()
            return str(response.json()["run_id"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.output.join(timeout=10)


def start_dev_server(data_dir: Path, **env: str) -> DevServer:
    """`aob server dev` on a free port, with authentication on."""
    environment = {
        **os.environ,
        "AOB_AUTH": "tokens",
        "AOB_RATE_LIMIT": "false",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "aob"),
            "server",
            "dev",
            "--data-dir",
            str(data_dir),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )
    assert process.stdout is not None
    try:
        console_url = _read_until(process.stdout, _CONSOLE_LINE, process)
    except BaseException:
        process.kill()
        raise
    output = _drain(process.stdout)
    token = console_url.split("#token=", 1)[1]
    base_url = console_url.split("/#", 1)[0]
    return DevServer(process, base_url, console_url, token, data_dir, output)


def _drain(stream: IO[str]) -> threading.Thread:
    """Keep reading a process's output, so that it never blocks on a full pipe; the
    pipe is closed when the process has ended."""

    def read() -> None:
        with stream:
            for _ in stream:
                pass

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@dataclass
class ScriptedLlmProcess:
    process: subprocess.Popen[str]
    base_url: str
    output: threading.Thread

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)
        self.output.join(timeout=10)


def start_scripted_llm(script: dict[str, Any], path: Path) -> ScriptedLlmProcess:
    """aob.workers.agent.demo_llm on a free port, answering from `script`."""
    path.write_text(json.dumps(script), encoding="utf-8")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aob.workers.agent.demo_llm",
            "--port",
            str(port),
            "--script",
            str(path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    _read_until(process.stdout, re.compile(r"(AOB_LLM_BASE_URL)"), process)
    output = _drain(process.stdout)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:  # printed before uvicorn listens: wait until it answers
        try:
            httpx.get(f"{base_url}/models", timeout=2)
            return ScriptedLlmProcess(process, base_url, output)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)


class CuttableProxy:
    """A TCP proxy on a free loopback port to `target` (host, port) that a test can cut:
    `cut()` closes every connection through it and refuses new ones until `restore()`,
    as a network drop would. `requests` holds the head of each HTTP request it passed."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.requests: list[str] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._down = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._down = True
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # the pipes' threads close them
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._down = False

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if self._down:
                    client.close()
                    continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if from_client and data[:4] in (b"GET ", b"POST"):
                    self.requests.append(data.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:  # each pipe closes the socket it reads
            self._open.discard(source)
        source.close()
