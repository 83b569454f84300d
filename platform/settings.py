"""All configuration, from `AOB_*` environment variables (or a .env file)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AOB_", env_file=".env", extra="ignore")

    data_dir: Path = Path(".aob")
    host: str = "127.0.0.1"
    port: int = 8080
    # Node types some worker outside this process executes (besides http, hitl, agent).
    node_types: list[str] = []
    runs_partitions: int = 8
    workflows_partitions: int = 4
    tasks_partitions: int = 4
    # "NORMAL" survives a crash of the process, "FULL" also a power loss.
    log_synchronous: str = "NORMAL"
    max_request_bytes: int = 2 * 1024 * 1024
