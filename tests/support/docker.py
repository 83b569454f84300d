"""Whether a Docker engine answers: testcontainers is only tried where one does."""

from __future__ import annotations

import os
import socket

DOCKER_SOCKET = "/var/run/docker.sock"


def docker_answers() -> bool:
    host = os.environ.get("DOCKER_HOST", f"unix://{DOCKER_SOCKET}")
    if not host.startswith("unix://"):
        return True  # a remote engine: let testcontainers try it
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2.0)
            probe.connect(host.removeprefix("unix://"))
            probe.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b" 200 " in probe.recv(64)
    except OSError:
        return False
