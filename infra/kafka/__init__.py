"""A single-node Apache Kafka broker (KRaft mode) for tests, benches and local tries.

No Docker: the broker's jars come from Maven Central through the machine's Maven
(cached under ~/.cache/aob/kafka), and the machine's Java 17 runs them.

    from aob.infra.kafka import KafkaBroker

    broker = KafkaBroker.start(directory)   # formats storage once, waits until ready
    broker.bootstrap                        # "127.0.0.1:<port>"
    broker.stop()                           # controlled shutdown; data stays

From a shell: `python -m aob.infra.kafka start|stop|status|fetch` (see __main__).
Standalone on purpose: stdlib plus aiokafka (for the readiness probe) only.
"""

from aob.infra.kafka.broker import (
    DEFAULT_HEAP,
    RESTART_SESSION_TIMEOUT_MS,
    KafkaBroker,
    find_java,
    free_port,
)
from aob.infra.kafka.errors import KafkaInfraError
from aob.infra.kafka.jars import DEFAULT_CACHE, DEFAULT_VERSION, fetch_jars

__all__ = [
    "DEFAULT_CACHE",
    "DEFAULT_HEAP",
    "DEFAULT_VERSION",
    "RESTART_SESSION_TIMEOUT_MS",
    "KafkaBroker",
    "KafkaInfraError",
    "fetch_jars",
    "find_java",
    "free_port",
]
