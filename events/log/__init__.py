"""The event log: the port (Kafka's semantics) and its embedded SQLite adapter."""

from aob.events.log.port import (
    Append,
    EventLog,
    LogError,
    Record,
    TopicPartition,
    UnknownTopic,
)

__all__ = ["Append", "EventLog", "LogError", "Record", "TopicPartition", "UnknownTopic"]
