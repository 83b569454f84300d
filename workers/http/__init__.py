"""The HTTP worker: executes `http` nodes behind a four-layer SSRF guard.

Wiring, for a composition root (embedded engine or a standalone worker process):

    worker = HttpWorker(HttpWorkerSettings())        # AOB_HTTP_* variables
    host = WorkerHost(event_log, worker.node_type(), worker_id="http")
    ...                                              # start and run the host
    await worker.aclose()                            # on shutdown: the connection pool

`http_node_type(settings)` is the short form when the pool may live as long as the
process. Modules: `guard` (pure URL/address/host/path judgement), `resolver` (the
resolver port), `transport` (the pinned connection pool), `config` (node config and
templates), `worker` (redirects, retries, limits, output), `idempotency` (the
Idempotency-Key header), `redact`, `metrics`.
"""

from aob.workers.http.guard import Blocked, GuardPolicy, Layer
from aob.workers.http.resolver import ResolveError, Resolver, SystemResolver
from aob.workers.http.settings import HttpWorkerSettings
from aob.workers.http.worker import HttpWorker, http_node_type

__all__ = [
    "Blocked",
    "GuardPolicy",
    "HttpWorker",
    "HttpWorkerSettings",
    "Layer",
    "ResolveError",
    "Resolver",
    "SystemResolver",
    "http_node_type",
]
