"""The HTTP worker's configuration, from `AOB_HTTP_*` environment variables.

Lists accept JSON (`["a", "b"]`) or comma-separated text (`a,b`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from aob.workers.http.guard import DEFAULT_DENY_PATHS, GuardPolicy

CommaList = Annotated[list[str], NoDecode]


class SecretBinding(BaseModel):
    """Where one named secret may be used: sent in one header, only toward the listed
    hosts, only for nodes of the listed tenants. Nodes name it (`config.secrets`);
    templates never see it."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    value: SecretStr
    header: str = "Authorization"
    # The header's value; "{value}" is replaced by the secret (e.g. "Bearer {value}").
    format: str = "{value}"
    # "api.github.com" (any port), "api.github.com:443", "10.0.0.5:8080", "[::1]:8080".
    hosts: list[str] = Field(min_length=1)
    # Tenants whose nodes may use it; "*" is every tenant. Runs without a tenant are
    # the "default" tenant's.
    tenants: list[str] = Field(default=["default"], min_length=1)

    @field_validator("format")
    @classmethod
    def _has_value(cls, value: str) -> str:
        if "{value}" not in value:
            raise ValueError('format must contain "{value}"')
        return value


class HttpWorkerSettings(BaseSettings):
    # Errors never echo their input: it may be a secret.
    model_config = SettingsConfigDict(
        env_prefix="AOB_HTTP_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    # SSRF guard. `allow`: host names (trusted with every address they resolve to), IP
    # addresses or CIDR networks let through although not public; `host:port` or
    # `[v6]:port` let exactly that host through at that port (whatever `ports` says);
    # nothing else is.
    allow: CommaList = []
    ports: CommaList = ["80", "443", "8080", "8443"]
    deny_hosts: CommaList = []
    deny_paths: CommaList = list(DEFAULT_DENY_PATHS)

    # Header names whose values never appear in outputs, errors or logs (besides the
    # built-in authorization, cookie, x-api-key, ...).
    secret_headers: CommaList = []
    # Named secrets, each bound to a header, hosts and tenants (JSON), e.g.
    # {"github": {"value": "ghp_...", "header": "Authorization", "format": "Bearer {value}",
    #             "hosts": ["api.github.com"], "tenants": ["acme"]}}
    # A node asks for one by name (`config.secrets: ["github"]`); the worker adds the
    # header just before sending, only to a bound host, and drops it on a redirect to
    # another origin. Templates cannot read secrets. Values (and their base64, hex,
    # reversed and percent-encoded forms) are redacted wherever they would appear.
    secrets: dict[str, SecretBinding] = {}

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

    @model_validator(mode="after")
    def _the_guard_can_be_built(self) -> HttpWorkerSettings:
        """A bad port, network, host or path is refused when the settings are read,
        naming its variable (not when a worker first builds its guard)."""
        for name in ("ports", "allow", "deny_hosts", "deny_paths"):
            try:
                GuardPolicy.build(**{name: getattr(self, name)})
            except ValueError as error:
                raise ValueError(f"AOB_HTTP_{name.upper()}: {error}") from None
        return self

    def guard_policy(self) -> GuardPolicy:
        """The guard's policy; raises ValueError on a bad entry."""
        return GuardPolicy.build(
            ports=self.ports,
            allow=self.allow,
            deny_hosts=self.deny_hosts,
            deny_paths=self.deny_paths,
        )
