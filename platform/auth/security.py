"""Access control of one API process: credentials, roles, rate limits, request bounds
and request metrics, installed on the app in one call (`install`).

`install(app, settings)` adds the middlewares (outermost first: metrics and trace,
consumer lag on scrape, authentication, tenant isolation, bounds, rate limiting), the
admin router, and opens/closes the stores with the app's lifespan:

- tokens and limiter state in PostgreSQL when `AOB_DATABASE_URL` is set (shared by
  every API process), else in `<data dir>/platform.db`;
- `AOB_AUTH=off` turns authentication off (callers name themselves, as before);
- `AOB_RATE_LIMIT=false` turns rate limiting off.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from aob.platform.api import admin
from aob.platform.api.bounds import Bounds, BoundsMiddleware
from aob.platform.auth.authenticator import Authenticator
from aob.platform.auth.http import AuthMiddleware
from aob.platform.auth.jwt import JwtConfig, JwtVerifier, Unauthenticated
from aob.platform.auth.principal import ADMIN, DEFAULT_TENANT, Permission
from aob.platform.auth.store import PostgresTokenStore, SqliteTokenStore, TokenStore
from aob.platform.auth.tenancy import TenantGuard
from aob.platform.observability import (
    HttpObservation,
    Metrics,
    ObservedStore,
    metrics_for,
    record_consumer_lag,
)
from aob.platform.ratelimit import (
    LimiterStore,
    PostgresLimiterStore,
    RateLimiter,
    SqliteLimiterStore,
    TierConfig,
)
from aob.platform.ratelimit.http import DefinitionLookup, RateLimitMiddleware

PLATFORM_DB = "platform.db"
# Roles whose process serves the API or its streams (see aob.platform.engine).
API_SERVING_ROLES = frozenset({"dev", "api", "fanout"})

log = logging.getLogger(__name__)


def _setting(settings: Any, name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def database_dsn(settings: Any) -> str | None:
    url = _setting(settings, "database_url", None)
    if url is None:
        return None
    return str(url.get_secret_value() if hasattr(url, "get_secret_value") else url)


def auth_enabled(settings: Any) -> bool:
    return str(_setting(settings, "auth", "tokens")) != "off"


def jwt_config(settings: Any) -> JwtConfig | None:
    """The JWT settings, when a JWKS URL or a key is configured."""
    key = _setting(settings, "auth_jwt_key", None)
    key = key.get_secret_value() if hasattr(key, "get_secret_value") else key
    jwks_url = _setting(settings, "auth_jwt_jwks_url", None)
    if not key and not jwks_url:
        return None
    return JwtConfig(
        jwks_url=jwks_url or None,
        key=None if jwks_url else key,
        algorithms=tuple(_setting(settings, "auth_jwt_algorithms", ["RS256", "ES256"])),
        issuer=_setting(settings, "auth_jwt_issuer", None),
        audience=_setting(settings, "auth_jwt_audience", None),
        name_claim=_setting(settings, "auth_jwt_name_claim", "sub"),
        roles_claim=_setting(settings, "auth_jwt_roles_claim", "roles"),
        tenant_claim=_setting(settings, "auth_jwt_tenant_claim", "tenant"),
        default_tenant=_setting(settings, "auth_jwt_default_tenant", None),
    )


def tier_config(settings: Any) -> TierConfig:
    return TierConfig(
        per_minute=dict(_setting(settings, "rate_limits", {}) or {}) or TierConfig().per_minute,
        standard_max_agents=int(_setting(settings, "rate_limit_standard_max_agents", 2)),
        tenants=dict(_setting(settings, "rate_limit_tenants", {}) or {}),
        burst=_setting(settings, "rate_limit_burst", None),
    )


async def open_token_store(settings: Any) -> TokenStore:
    dsn = database_dsn(settings)
    if dsn:
        return await PostgresTokenStore.open(dsn)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return await SqliteTokenStore.open(settings.data_dir / PLATFORM_DB)


async def open_limiter_store(settings: Any) -> LimiterStore:
    dsn = database_dsn(settings)
    if dsn:
        return await PostgresLimiterStore.open(dsn)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return await SqliteLimiterStore.open(settings.data_dir / PLATFORM_DB)


class Security:
    """The stores and checkers of one API process; open with the app, close after."""

    def __init__(self, settings: Any, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or metrics_for()
        self.enabled = auth_enabled(settings)
        self.limiting = bool(_setting(settings, "rate_limit", True))
        self.tiers = tier_config(settings)  # refuses a bad configuration at once
        self.jwt = jwt_config(settings)
        self.authenticator: Authenticator | None = None
        self.limiter: RateLimiter | None = None

    async def open(self) -> None:
        if self.enabled:
            tokens = await open_token_store(self.settings)
            verifier = JwtVerifier(self.jwt) if self.jwt is not None else None
            cache_seconds = float(_setting(self.settings, "auth_token_cache_seconds", 0.0))
            self.authenticator = Authenticator(tokens, verifier, cache_seconds=cache_seconds)
        if self.limiting:
            self.limiter = RateLimiter(await open_limiter_store(self.settings), self.tiers)

    async def dependencies(self) -> dict[str, str]:
        """Whether the stores this process opened answer: "ok", or the error."""
        stores: dict[str, Any] = {}
        if self.authenticator is not None:
            stores["token_store"] = self.authenticator.tokens
        if self.limiter is not None:
            stores["rate_limiter_store"] = self.limiter.store
        found: dict[str, str] = {}
        for name, store in stores.items():
            try:
                await store.ping()
                found[name] = "ok"
            except Exception as error:
                found[name] = f"error: {error}"
        return found

    async def close(self) -> None:
        if self.authenticator is not None:
            await self.authenticator.tokens.close()
            self.authenticator = None
        if self.limiter is not None:
            await self.limiter.close()
            self.limiter = None


def install(app: FastAPI, settings: Any, role: str = "dev") -> Security:
    """Protect `app`: see the module's docstring. Call after the routes are added.

    Services without the API (coordinator, projector, workers) get only the request
    metrics; every service's /metrics refreshes its consumers' lag when scraped.
    """
    security = Security(settings)
    app.state.security = security
    if role in API_SERVING_ROLES:
        if role != "fanout":
            app.include_router(admin.router)
        bounds = Bounds(max_body_bytes=int(_setting(settings, "max_request_bytes", 2 << 20)))
        # Added innermost first: Starlette wraps each new middleware around the others.
        app.add_middleware(
            RateLimitMiddleware,
            limiter=lambda: security.limiter,
            lookup=_definition_lookup(app),
            on_refusal=lambda tier: security.metrics.rate_limited.labels(tier).inc(),
        )
        app.add_middleware(BoundsMiddleware, bounds=bounds)
        app.add_middleware(TenantGuard, engine=lambda: getattr(app.state, "engine", None))
        app.add_middleware(
            AuthMiddleware,
            authenticator=lambda: security.authenticator,
            enabled=security.enabled,
            on_refusal=lambda why: security.metrics.auth_refusals.labels(why).inc(),
        )
    serves_api = role in API_SERVING_ROLES
    app.router.lifespan_context = _with_security(app.router.lifespan_context, security, serves_api)
    app.add_middleware(_LagOnScrape, metrics=security.metrics)
    app.add_middleware(HttpObservation, metrics=security.metrics)
    return security


class _LagOnScrape:
    """Refreshes `consumer_lag` of this process's consumers before /metrics answers."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") == "/metrics":
            engine = getattr(scope.get("app"), "state", None)
            engine = getattr(engine, "engine", None)
            if engine is not None:
                await refresh_consumer_lag(self.metrics, engine)
        await self.app(scope, receive, send)


async def refresh_consumer_lag(metrics: Metrics, engine: Any) -> None:
    """Lag of the consumer groups `engine` hosts: the coordinator, workers and hitl
    service from their committed offsets, the projector from the positions it applied."""
    groups: dict[str, list[str]] = {}
    consumers = [getattr(getattr(engine, "coordinator", None), "consumer", None)]
    consumers += [getattr(w, "consumer", None) for w in getattr(engine, "workers", [])]
    hitl = getattr(engine, "hitl", None)
    consumers += [getattr(hitl, "requests", None), getattr(hitl, "decisions", None)]
    for consumer in consumers:
        if consumer is not None:
            groups.setdefault(consumer.group, []).extend(consumer.topics)
    positions = {}
    projector = getattr(engine, "projector", None)
    if projector is not None:
        groups[projector.consumer.group] = list(projector.consumer.topics)
        positions[projector.consumer.group] = dict(projector.applied)
    try:
        await record_consumer_lag(metrics, engine.log, groups, positions)
    except Exception:  # a scrape must answer even when the log does not
        log.warning("consumer lag not measured", exc_info=True)


def observe_projector(engine: Any, metrics: Metrics) -> None:
    """Count the events this process's projector applies (run, node, approval and LLM
    counters: see `ObservedStore`), by wrapping its store. The projector runs in one
    process of a cluster (the dev server or the projector service), so each event is
    counted once. (The one-line alternative: build the engine's ProjectorHost with
    `ObservedStore(read_models)`.)"""
    projector = getattr(engine, "projector", None)
    if projector is not None and not isinstance(projector.store, ObservedStore):
        projector.store = ObservedStore(projector.store, metrics)


def _with_security(
    inner: Callable[[Any], AbstractAsyncContextManager[Any]],
    security: Security,
    serves_api: bool,
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        if serves_api:
            await security.open()
        try:
            async with inner(app) as state:
                observe_projector(getattr(app.state, "engine", None), security.metrics)
                yield state
        finally:
            await security.close()

    return lifespan


def _definition_lookup(app: FastAPI) -> DefinitionLookup:
    """Finds the definition a submission runs: inline, by tag or id, or a replayed run's."""

    async def lookup(body: dict[str, Any], replayed: str | None, tenant: str) -> Any:
        engine = getattr(app.state, "engine", None)
        if engine is None:
            return None
        read = engine.read_models
        if replayed is not None:
            run = await read.get_run(replayed)
            return run.get("definition") if run and run.get("tenant") == tenant else None
        if body.get("definition") is not None:
            return body["definition"]
        ref = body.get("tag") or body.get("workflow_id")
        version = body.get("version")
        if not isinstance(ref, str) or len(ref) > 256:
            return None
        if not isinstance(version, int) or isinstance(version, bool):
            version = None
        tag = await read.get_tag(ref) if version is None and body.get("tag") else None
        if tag is not None and tag.get("tenant") == tenant:
            workflow = await read.get_workflow(tag["workflow_id"], tag["version"])
        else:
            workflow = await read.get_workflow(ref, version)
        return workflow.get("definition") if workflow and workflow["tenant"] == tenant else None

    return lookup


LOCAL_ADMIN_FILE = "admin-token"


async def local_admin_token(settings: Any, name: str = "local-admin") -> str | None:
    """The dev server's admin token of the default tenant: the one saved in the data
    dir (`admin-token`, readable by its owner only) while it is valid, else a new one,
    saved there. None when authentication is off. One token per data dir, so a token
    exported once keeps working across restarts."""
    if not auth_enabled(settings):
        return None
    saved = Path(settings.data_dir) / LOCAL_ADMIN_FILE
    store = await open_token_store(settings)
    try:
        authenticator = Authenticator(store)
        token = saved.read_text(encoding="ascii").strip() if saved.is_file() else ""
        if token:
            try:
                principal = await authenticator.authenticate(token)
            except Unauthenticated:
                principal = None
            if principal is not None and principal.may(Permission.ADMIN):
                return token
        token, _ = await authenticator.issue(
            name,
            DEFAULT_TENANT,
            [ADMIN],
            created_by="aob server dev",
            description="created by aob server dev; revoke to rotate",
        )
    finally:
        await store.close()
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.touch(mode=0o600)
    saved.chmod(0o600)
    saved.write_text(token + "\n", encoding="ascii")
    return token


def admin_token_help(token: str, base_url: str) -> str:
    """What `aob server dev` prints about its admin token."""
    return (
        f"  admin token (tenant {DEFAULT_TENANT!r}, saved in the data dir as "
        f"{LOCAL_ADMIN_FILE}):\n"
        f"    export AOB_TOKEN={token}\n"
        f"  the aob CLI sends it; with curl: "
        f'curl -H "Authorization: Bearer $AOB_TOKEN" {base_url}/api/v1/runs'
    )
