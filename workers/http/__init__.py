"""The HTTP worker: executes `http` nodes behind a four-layer SSRF guard."""

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
