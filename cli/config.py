"""Where the server is and who is calling: flags, then environment, then a config file.

The config file is TOML (`~/.config/aob/config.toml`, or `$XDG_CONFIG_HOME/aob/...`,
or `--config` / `AOB_CONFIG`), with top-level keys `server`, `token` and `actor`.
It is read only when a flag or variable leaves something to fill in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from aob.cli.errors import EXIT_USAGE, CliError

DEFAULT_SERVER = "http://127.0.0.1:8080"
KEYS = ("server", "token", "actor")


class Connection(NamedTuple):
    server: str
    token: str | None
    actor: str | None
    timeout: float


def server_problem(url: str) -> str | None:
    """Why `url` cannot be an aob server's address (None when it can): an http(s) URL
    with a host and, if any, a port from 1 to 65535."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError as error:
        return f"server address {url!r} is not a URL ({error}); it must look like http://host:port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"server address {url!r} must look like http://host:port"
    if port == 0:
        return f"server address {url!r}: the port must be from 1 to 65535"
    return None


def config_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("AOB_CONFIG"):
        return Path(os.environ["AOB_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "aob" / "config.toml"


def resolve(
    *,
    server: str | None,
    token: str | None,
    actor: str | None,
    config: str | None,
    timeout: float,
) -> Connection:
    values: dict[str, str | None] = {
        "server": server or os.environ.get("AOB_SERVER") or None,
        "token": token or os.environ.get("AOB_TOKEN") or None,
        "actor": actor or os.environ.get("AOB_ACTOR") or None,
    }
    named = config or os.environ.get("AOB_CONFIG") or None  # a file named must exist
    if any(v is None for v in values.values()) or named:
        from_file = load_config(config_path(config), required=bool(named))
        for key in KEYS:
            values[key] = values[key] or from_file.get(key)
    address = (values["server"] or DEFAULT_SERVER).rstrip("/")
    problem = server_problem(address)  # from AOB_SERVER or the file: --server is checked
    if problem:
        raise CliError(problem, EXIT_USAGE)
    return Connection(
        server=address,
        token=values["token"],
        actor=values["actor"],
        timeout=timeout,
    )


def load_config(path: Path, *, required: bool) -> dict[str, str]:
    """The file's settings; {} when it does not exist (unless it was named explicitly)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise CliError(f"config file {path} does not exist", EXIT_USAGE) from None
        return {}
    except OSError as error:
        raise CliError(f"cannot read config file {path}: {error.strerror}", EXIT_USAGE) from None
    import tomllib  # only when there is a file to read

    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise CliError(f"config file {path}: {error}", EXIT_USAGE) from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise CliError(
            f"config file {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(KEYS)})",
            EXIT_USAGE,
        )
    for key, value in data.items():
        if not isinstance(value, str):
            raise CliError(f"config file {path}: {key} must be a string", EXIT_USAGE)
    return data
