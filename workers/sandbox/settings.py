"""Budgets of the jq sandbox, from `AOB_JQ_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SandboxSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AOB_JQ_", env_file=".env", extra="ignore")

    # CPU time one evaluation may use (compile + run + serialize), enforced by the kernel
    # (SIGPROF kills the child even while libjq holds the GIL).
    cpu_ms: int = Field(default=250, ge=1)
    # Memory one evaluation may allocate on top of the child's baseline (RLIMIT_AS).
    memory_mb: int = Field(default=256, ge=16)
    # Size of the serialized JSON of an evaluation's result(s).
    output_bytes: int = Field(default=1024 * 1024, ge=1)
    # Deepest nesting of a result: deeper values cannot be encoded into events.
    max_depth: int = Field(default=512, ge=1, le=800)
    # Child processes evaluating jq in parallel.
    workers: int = Field(default=2, ge=1)
    # Wall-clock guard per evaluation in the parent, for a child that is stuck without
    # using CPU; None means max(20 x cpu_ms, 5000).
    wall_ms: int | None = Field(default=None, ge=1)
    # Longer programs are refused before anything compiles them.
    max_program_bytes: int = Field(default=16 * 1024, ge=1)
    # Evaluations waiting for a free child; more are refused (retryably) as overload.
    max_queue: int = Field(default=10_000, ge=1)

    def wall_s(self) -> float:
        """The parent's wall-clock guard in seconds."""
        wall_ms = self.wall_ms if self.wall_ms is not None else max(20 * self.cpu_ms, 5000)
        return wall_ms / 1000
