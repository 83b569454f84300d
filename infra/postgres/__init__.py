"""A throwaway PostgreSQL server for tests, benches and local tries.

It runs the binaries of the distribution's packages (Debian's `postgresql`) from a
temporary directory: `initdb` there, listen on a free loopback port, password
authentication, no Unix socket. Nothing outside that directory is touched, so any
number can run side by side and removing the directory removes every trace.

PostgreSQL refuses to run as root; as root, the server runs as the `postgres` user
that the package creates, and the directory is handed to that user.

Stdlib only, so it runs before the project's dependencies are installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

__all__ = ["PostgresError", "PostgresServer", "find_bin_dir"]

USER = "aob"
DATABASE = "postgres"
STATE_FILE = "server.json"
SERVICE_USER = "postgres"
INSTALL_HINT = "install PostgreSQL (Debian: apt-get install -y postgresql) or set AOB_PG_BIN"

# Loopback only, TCP only: the Unix socket's default directory is shared and may not exist.
BASE_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "200",
    "logging_collector": "off",
}
# Only for servers whose data may be lost: never for the product's database.
NO_FSYNC_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresError(RuntimeError):
    """The server could not be set up, started or stopped; the message says why."""


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway server; `start` makes one, `stop` ends it."""

    directory: Path
    bin_dir: Path
    port: int
    password: str
    run_as: str | None

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "postgres.log"

    @classmethod
    def start(
        cls,
        directory: str | os.PathLike[str] | None = None,
        *,
        fsync: bool = True,
        port: int | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        timeout: float = 60.0,
    ) -> Self:
        """Initialise a cluster in `directory` (a new temporary one by default), start
        it and wait until it accepts connections.

        `fsync=False` trades durability for speed: fine for tests, whose data is
        thrown away, never for anything that must survive a crash.
        """
        binaries = Path(bin_dir) if bin_dir is not None else find_bin_dir()
        home = _prepare_directory(directory)
        run_as = SERVICE_USER if os.geteuid() == 0 else None
        server = cls(home, binaries, 0, secrets.token_urlsafe(18), run_as)
        try:
            server._initdb(fsync)
            server = server._launch(port, timeout)
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        (home / STATE_FILE).write_text(json.dumps(asdict(server), default=str), encoding="utf-8")
        return server

    @classmethod
    def attach(cls, directory: str | os.PathLike[str]) -> Self:
        """The server that `start` left running in `directory`."""
        state_file = Path(directory) / STATE_FILE
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PostgresError(f"no server was started in {directory}") from None
        return cls(
            Path(state["directory"]),
            Path(state["bin_dir"]),
            int(state["port"]),
            str(state["password"]),
            state["run_as"],
        )

    def running(self) -> bool:
        status = self._run(["pg_ctl", "status", "-D", str(self.data_dir)], check=False)
        return status.returncode == 0

    def stop(self, *, remove: bool = True, timeout: float = 60.0) -> None:
        """Stop the server (a fast shutdown: sessions are ended) and by default
        remove its directory. Stopping a stopped server only removes it."""
        if self.data_dir.exists() and self.running():
            self._pg_ctl("stop", "-m", "fast", "-t", str(int(timeout)))
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- steps ----------------------------------------------------------------------------

    def _initdb(self, fsync: bool) -> None:
        password_file = self.directory / "password"
        password_file.write_text(self.password + "\n", encoding="utf-8")
        password_file.chmod(0o600)
        self._give(password_file)
        try:
            self._run(
                [
                    "initdb",
                    "--pgdata",
                    str(self.data_dir),
                    "--username",
                    USER,
                    "--pwfile",
                    str(password_file),
                    "--auth",
                    "scram-sha-256",
                    "--encoding",
                    "UTF8",
                    # The C locale sorts text bytewise, like SQLite, and is the fastest.
                    "--no-locale",
                    # The cluster is thrown away with its directory: syncing it buys nothing.
                    "--no-sync",
                ]
            )
        finally:
            password_file.unlink(missing_ok=True)
        settings = {**BASE_SETTINGS, **({} if fsync else NO_FSYNC_SETTINGS)}
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# aob.infra.postgres\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _launch(self, port: int | None, timeout: float, attempts: int = 3) -> Self:
        """Start on `port`, or on a free port: another process can take a port between
        our probe and the server's bind, so a lost race is retried on a new one."""
        for attempt in range(1, attempts + 1):
            server = type(self)(
                self.directory, self.bin_dir, port or free_port(), self.password, self.run_as
            )
            try:
                server._pg_ctl("start", "-t", str(int(timeout)), "-o", f"-p {server.port}")
            except PostgresError:
                if port is not None or attempt == attempts or not server._port_was_taken():
                    raise
                continue
            server._wait_for_port(timeout)
            return server
        raise AssertionError("unreachable")

    def _port_was_taken(self) -> bool:
        return "Address already in use" in self._log_tail()

    def _wait_for_port(self, timeout: float) -> None:
        """`pg_ctl -w` returns once the server reports ready; check it really listens."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise PostgresError(f"server not reachable on port {self.port}: {e}") from e
                time.sleep(0.05)

    def _pg_ctl(self, *args: str) -> None:
        command = ["pg_ctl", args[0], "-D", str(self.data_dir), "-w", "-l", str(self.log_file)]
        self._run([*command, *args[1:]])

    # --- plumbing -------------------------------------------------------------------------

    def _run(self, command: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        program = str(self.bin_dir / command[0])
        result = subprocess.run(
            [program, *command[1:]],
            user=self.run_as,
            cwd=self.directory,  # the service user may not be allowed into ours
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            tail = self._log_tail()
            raise PostgresError(
                f"{command[0]} {command[1] if len(command) > 1 else ''} failed "
                f"(exit {result.returncode}): {output}" + (f"\nserver log:\n{tail}" if tail else "")
            )
        return result

    def _give(self, path: Path) -> None:
        """Hand a path to the service user, when the server runs as one."""
        if self.run_as is not None:
            shutil.chown(path, user=self.run_as, group=_group_of(self.run_as))

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""


def find_bin_dir() -> Path:
    """The directory holding `initdb` and `pg_ctl`: $AOB_PG_BIN, else the newest
    /usr/lib/postgresql/<version>/bin, else wherever PATH finds them."""
    configured = os.environ.get("AOB_PG_BIN")
    if configured:
        if not (Path(configured) / "initdb").exists():
            raise PostgresError(f"AOB_PG_BIN={configured} holds no initdb")
        return Path(configured)
    candidates = [
        path
        for path in Path("/usr/lib/postgresql").glob("*/bin")
        if (path / "initdb").exists() and (path / "pg_ctl").exists()
    ]
    if candidates:
        return max(candidates, key=_version_of)
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).resolve().parent
    raise PostgresError(f"PostgreSQL binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _prepare_directory(directory: str | os.PathLike[str] | None) -> Path:
    """A directory for one cluster; as root, owned by the service user."""
    if directory is None:
        home = Path(tempfile.mkdtemp(prefix="aob-postgres-"))
    else:
        home = Path(directory).absolute()
        home.mkdir(parents=True, exist_ok=True)
        if any(home.iterdir()):
            raise PostgresError(f"{home} is not empty: give a new or empty directory")
    home.chmod(0o700)
    if os.geteuid() == 0:
        _require_service_user()
        shutil.chown(home, user=SERVICE_USER, group=_group_of(SERVICE_USER))
        _require_reachable(home)
    return home


def _require_reachable(home: Path) -> None:
    """A parent closed to the service user (root's 0700 pytest and mkdtemp folders)
    would fail deep inside initdb; say so plainly instead."""
    probe = subprocess.run(["test", "-w", str(home)], user=SERVICE_USER, check=False)
    if probe.returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        raise PostgresError(
            f"the '{SERVICE_USER}' user cannot reach {home} (a parent directory is closed "
            "to it): give a directory it can reach, for example under /tmp"
        )


def _require_service_user() -> None:
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise PostgresError(
            f"running as root needs the '{SERVICE_USER}' system user, which the PostgreSQL "
            f"package creates: {INSTALL_HINT}"
        ) from None


def _group_of(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


def _version_of(bin_dir: Path) -> tuple[int, ...]:
    name = bin_dir.parent.name
    return tuple(int(part) for part in name.split(".") if part.isdigit())
