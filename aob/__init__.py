"""aob: agentic workflows on an event-sourced, Kafka-native engine.

The card's top-level folders are this package's subpackages (see pyproject.toml).
"""

__version__ = "0.1.0"
