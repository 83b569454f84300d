"""The HTTP worker's configuration, from `AOB_HTTP_*` environment variables.

Lists accept JSON (`["a", "b"]`) or comma-separated text (`a,b`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from aob.workers.http.guard import DEFAULT_DENY_PATHS, GuardPolicy

CommaList = Annotated[list[str], NoDecode]


class HttpWorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AOB_HTTP_", env_file=".env", extra="ignore")

    # SSRF guard. `allow`: host names (trusted with every address they resolve to), IP
    # addresses or CIDR networks let through although not public; nothing else is.
    allow: CommaList = []
    ports: CommaList = ["80", "443", "8080", "8443"]
    deny_hosts: CommaList = []
    deny_paths: CommaList = list(DEFAULT_DENY_PATHS)

    # Header names whose values never appear in outputs, errors or logs (besides the
    # built-in authorization, cookie, x-api-key, ...).
    secret_headers: CommaList = []
    # Values templates can use as `.secrets.<name>`: they never enter the event log, and
    # are redacted wherever they would appear.
    secrets: dict[str, SecretStr] = {}

    timeout_ms: int = Field(default=30_000, ge=1)  # per request, when the node sets none
    max_timeout_ms: int = Field(default=300_000, ge=1)
    max_response_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    max_retries: int = Field(default=5, ge=0)  # cap on a node's `retries`
    max_retry_delay_ms: int = Field(default=30_000, ge=0)  # a longer Retry-After is not waited for
    max_redirects: int = Field(default=5, ge=0)
    max_connections: int = Field(default=100, ge=1)  # the one shared pool
    max_keepalive_connections: int = Field(default=20, ge=0)
    concurrency: int = Field(default=32, ge=1)  # tasks in flight per worker
    # PEM bundle of the CAs to trust instead of the system's (e.g. an internal CA).
    ca_bundle: Path | None = None

    @field_validator("allow", "ports", "deny_hosts", "deny_paths", "secret_headers", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    def guard_policy(self) -> GuardPolicy:
        """The guard's policy; raises ValueError on a bad entry."""
        return GuardPolicy.build(
            ports=self.ports,
            allow=self.allow,
            deny_hosts=self.deny_hosts,
            deny_paths=self.deny_paths,
        )
