"""The one error `aob.infra.kafka` raises."""

from __future__ import annotations

__all__ = ["KafkaInfraError"]


class KafkaInfraError(RuntimeError):
    """The broker could not be fetched, started or stopped; the message says why."""
