"""All configuration, from `AOB_*` environment variables (or a .env file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES: Final = ("dev", "api", "coordinator", "projector", "workers", "fanout")
# A workflow definition is recorded whole in one event (WorkflowCreated, RunSubmitted),
# and twice in its run's coordinator state (a changelog record holding the base and the
# materialized definition), each bounded by AOB_MAX_EVENT_BYTES: a definition may take
# (AOB_MAX_EVENT_BYTES - DEFINITION_EVENT_HEADROOM) / DEFINITION_COPIES, the headroom
# being for the rest of the record (envelope, inputs, node states).
DEFINITION_EVENT_HEADROOM: Final = 32 * 1024
DEFINITION_COPIES: Final = 2
WORKER_KINDS: Final = ("builtin", "http", "hitl", "agent")


class LlmEndpoint(BaseModel):
    """An LLM endpoint agent nodes may name (AOB_LLM_ENDPOINTS)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    base_url: str = Field(pattern=r"^https?://")
    api_key: SecretStr = SecretStr("")
    models: list[str] = []
    tenants: list[str] = Field(default=["default"], min_length=1)


class ModelPriceSetting(BaseModel):
    """A model's price (AOB_MODEL_PRICES), in USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)  # default: the input price


class BudgetSetting(BaseModel):
    """A tenant's budget per period (AOB_TENANT_BUDGETS); an absent limit is no limit."""

    model_config = ConfigDict(extra="forbid")

    max_cost_usd: float | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AOB_", env_file=".env", extra="ignore")

    data_dir: Path = Path(".aob")
    host: str = "127.0.0.1"
    # Unset, each service listens on its own default port (see `aob server --help`).
    port: int = Field(default=8080, ge=0, le=65535)

    # Cluster mode: a Kafka cluster ("host:port,...") instead of the embedded log, and
    # PostgreSQL (postgresql://...) instead of the SQLite read models.
    kafka_bootstrap: str | None = None
    database_url: SecretStr | None = None
    database_pool_size: int = Field(default=10, ge=1)
    # Seconds between checks for other processes' appends while a consumer waits.
    kafka_poll_interval: float = Field(default=0.1, gt=0)
    # Prepended to every topic and consumer group: several installations on one cluster.
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$", max_length=100)
    # The workers a `dev` or `workers` service runs: builtin, http, hitl, agent.
    workers: list[str] = ["builtin", "http", "hitl", "agent"]
    # Node types some worker outside this process executes (besides http, hitl, agent).
    node_types: list[str] = []
    # A node whose type no worker runs (often a typo: `htpp`): "skip" accepts the
    # workflow with a warning and skips the node at run time (its dependents still run);
    # "error" refuses the workflow at validation and submission.
    unknown_node_types: Literal["skip", "error"] = "skip"
    runs_partitions: int = Field(default=8, ge=1)
    workflows_partitions: int = Field(default=4, ge=1)
    tasks_partitions: int = Field(default=4, ge=1)
    # "NORMAL" survives a crash of the process, "FULL" also a power loss (any case).
    log_synchronous: Annotated[
        Literal["NORMAL", "FULL", "EXTRA"], BeforeValidator(lambda v: str(v).upper())
    ] = "NORMAL"
    max_request_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Limits on a workflow definition, checked by the API before anything in it is
    # compiled; they may only be lowered: the coordinator validates with the defaults.
    workflow_max_nodes: int = Field(default=500, ge=1, le=500)
    workflow_max_edges: int = Field(default=2000, ge=0, le=2000)
    # At most `definition_room` (see DEFINITION_COPIES), so that a definition that passes
    # validation also fits in the records that hold it; the default follows a lowered
    # AOB_MAX_EVENT_BYTES, an explicit value over it is refused at start.
    workflow_max_document_bytes: int = Field(default=240 * 1024, ge=1024, le=1 << 20)
    workflow_max_depth: int = Field(default=64, ge=4, le=64)  # objects/arrays nested
    workflow_max_expression_bytes: int = Field(default=16 * 1024, ge=16, le=16 * 1024)
    workflow_max_expressions: int = Field(default=500, ge=1, le=500)  # distinct jq programs

    # Agent nodes: the default OpenAI-compatible endpoint ("default") and the bounds of
    # one node attempt. Nodes may override the model and limits, and name another endpoint.
    llm_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_api_key: SecretStr = SecretStr("")  # sent to llm_base_url only
    # The other endpoints nodes may name (`config.endpoint`), each with its own key (JSON):
    # {"local": {"base_url": "http://10.0.0.5:8000/v1", "api_key": "...",
    #            "models": ["llama-3"], "tenants": ["acme"]}}
    # `models` (empty: any) are the models nodes may ask for (the first is the default);
    # `tenants` ("*": every tenant) default to ["default"]. Their traffic goes through the
    # HTTP worker's SSRF guard: a private address must be allowed in AOB_HTTP_ALLOW.
    llm_endpoints: dict[str, LlmEndpoint] = {}
    llm_max_retries: int = Field(default=3, ge=0, le=10)  # SDK retries on 429, 5xx, ...
    llm_timeout_ms: int = Field(default=60_000, ge=1)
    llm_max_connections: int = Field(default=100, ge=1)  # per pool (default endpoint; guarded)
    llm_max_rounds: int = Field(default=10, ge=0)  # tool-call rounds per node
    llm_max_tokens: int = Field(default=100_000, ge=1)  # token budget per node
    llm_max_wall_ms: int = Field(default=300_000, ge=1)
    llm_max_patch_attempts: int = Field(default=3, ge=1)  # invalid patches before failing
    llm_max_delegation_depth: int = Field(default=2, ge=0)
    llm_blob_threshold_bytes: int = Field(default=64 * 1024, ge=0)
    llm_concurrency: int = Field(default=16, ge=1)  # agent nodes in flight per worker

    # Live output of agent nodes (docs/streaming.md): tokens and tool steps go to a
    # short-retention delta stream beside the durable log, bounded whatever a model sends.
    delta_bytes: int = Field(default=4096, ge=64)  # largest text or arguments in one delta
    delta_flush_ms: int = Field(default=50, ge=0)  # fragments within this make one delta
    delta_attempt_bytes: int = Field(default=4 * 1024 * 1024, ge=0)  # per node attempt
    delta_ring: int = Field(default=1000, ge=1)  # deltas kept per run, to resume from
    delta_run_bytes: int = Field(default=256 * 1024, ge=1024)  # bytes kept per run
    delta_runs: int = Field(default=256, ge=1)  # runs kept per API process (LRU)
    delta_queue: int = Field(default=2000, ge=1)  # deltas waiting for one subscriber
    # Cluster: Kafka deletes deltas older than this from the topic aob.deltas.
    delta_retention_ms: int = Field(default=3_600_000, ge=1000)

    @field_validator("llm_endpoints")
    @classmethod
    def _default_is_reserved(cls, value: dict[str, LlmEndpoint]) -> dict[str, LlmEndpoint]:
        if "default" in value:
            raise ValueError('"default" names AOB_LLM_BASE_URL; choose another name')
        return value

    # LLM cost and budgets (docs/budgets.md). Prices by model, in USD per million tokens:
    # '{"gpt-4o-mini": {"input": 0.15, "output": 0.6, "cached_input": 0.075}}'. Usage
    # events record the cost at these prices; a model not listed has an unknown cost
    # (its tokens still count, and a cost budget refuses it).
    model_prices: dict[str, ModelPriceSetting] = {}
    # Budgets per tenant and period, set by the operator only (no tenant can raise its
    # own): '{"acme": {"max_cost_usd": 100}, "*": {"max_tokens": 5000000}}'; "*" is for
    # every tenant without an entry of its own. Exceeding one fails the node.
    tenant_budgets: dict[str, BudgetSetting] = {}
    # The tenant budgets' period: calendar day, week (from Monday) or month, in UTC.
    budget_period: Literal["day", "week", "month"] = "month"
    # How long a "budget exceeded, continue?" approval waits before it counts as
    # rejected (the wait does not count against the node's max_wall_ms).
    budget_approval_timeout_ms: int = Field(default=3_600_000, ge=1000)

    # Authentication: "tokens" (API tokens; also JWTs when a JWKS URL or key is set) or
    # "off" (callers name themselves with X-Aob-Actor; for tests and trusted networks).
    auth: Literal["tokens", "off"] = "tokens"
    auth_jwt_jwks_url: str | None = None  # the identity provider's JWKS
    auth_jwt_key: SecretStr | None = None  # or a static key (PEM public key)
    auth_jwt_algorithms: list[str] = ["RS256", "ES256"]
    auth_jwt_issuer: str | None = None
    auth_jwt_audience: str | None = None
    auth_jwt_name_claim: str = "sub"
    auth_jwt_roles_claim: str = "roles"  # a dotted path reaches nested claims
    auth_jwt_tenant_claim: str = "tenant"
    auth_jwt_default_tenant: str | None = None  # for tokens without a tenant claim
    # How long an API process reuses a token's stored record instead of reading it per
    # request; a revocation made in another process (or by `python -m aob.platform.auth
    # revoke`) counts after at most this long, one made through this process at once.
    # 0: read the store on every request.
    auth_token_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    # Run submissions per minute and tenant, by tier (tiers by agent count: none is
    # simple, up to rate_limit_standard_max_agents standard, more heavy), with
    # per-tenant overrides ({"acme": {"heavy": 30}}); a burst spends up to a minute's.
    rate_limit: bool = True
    rate_limits: dict[str, int] = {"simple": 100, "standard": 20, "heavy": 5}
    rate_limit_standard_max_agents: int = Field(default=2, ge=1)
    rate_limit_tenants: dict[str, dict[str, int]] = {}
    rate_limit_burst: int | None = Field(default=None, ge=1)
    # Log lines: "json" (one object per line, with trace ids) or "text".
    log_format: Literal["json", "text"] = "json"
    # OpenTelemetry traces (docs/tracing.md): the OTLP/HTTP collector spans are sent to,
    # e.g. http://localhost:4318 (traces go to its /v1/traces). Unset: off, unless the
    # standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set.
    otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://")

    # Events are bounded: every encoded event is checked against this before it is
    # appended (Kafka's default message limit is about 1 MB). An event over it fails
    # its node or run with a message naming this setting; it never reaches the log.
    max_event_bytes: int = Field(default=512 * 1024, ge=64 * 1024, le=1_000_000)
    # Node and run outputs whose JSON is larger than this go to the content-addressed
    # blob store; events carry the reference, so no output is copied into later events.
    output_inline_bytes: int = Field(default=16 * 1024, ge=0, le=256 * 1024)
    # The coordinator decides simple work in process, in the batch that asks for it:
    # transform and noop nodes, edge and loop conditions and run outputs whose jq is on
    # the sandbox's fast path. The same events are recorded (no task reaches a worker);
    # off, every task goes through its topic and worker.
    inline_simple_work: bool = True

    @property
    def definition_room(self) -> int:
        """The largest definition the records holding it have room for."""
        return (self.max_event_bytes - DEFINITION_EVENT_HEADROOM) // DEFINITION_COPIES

    @model_validator(mode="after")
    def _a_valid_definition_fits_in_its_records(self) -> Settings:
        room = self.definition_room
        if self.workflow_max_document_bytes <= room:
            return self
        if "workflow_max_document_bytes" not in self.model_fields_set:
            self.workflow_max_document_bytes = room
            return self
        raise ValueError(
            f"AOB_WORKFLOW_MAX_DOCUMENT_BYTES ({self.workflow_max_document_bytes}) must be "
            f"at most (AOB_MAX_EVENT_BYTES ({self.max_event_bytes}) - "
            f"{DEFINITION_EVENT_HEADROOM}) / {DEFINITION_COPIES} = {room}: a definition is "
            "recorded whole in an event, and twice in its run's coordinator state; lower it "
            "or raise AOB_MAX_EVENT_BYTES"
        )

    @model_validator(mode="after")
    def _one_source_of_jwt_keys(self) -> Settings:
        if self.auth_jwt_jwks_url and self.auth_jwt_key is not None:
            raise ValueError(
                "AOB_AUTH_JWT_JWKS_URL and AOB_AUTH_JWT_KEY are both set: tokens are checked"
                " against one source of keys; unset one"
            )
        return self


def service_problem(settings: Settings, service: str) -> str | None:
    """Why these settings cannot run `service`, or None when they can."""
    if service not in SERVICES:
        return f"unknown service {service!r}; one of {', '.join(SERVICES)}"
    unknown = sorted(set(settings.workers) - set(WORKER_KINDS))
    if unknown:
        return f"AOB_WORKERS: unknown {unknown}; choose among {list(WORKER_KINDS)}"
    if service == "dev":
        return None
    missing = [
        variable
        for variable, value in (
            ("AOB_KAFKA_BOOTSTRAP", settings.kafka_bootstrap),
            ("AOB_DATABASE_URL", settings.database_url),
        )
        if not value
    ]
    if missing:
        return (
            f"the {service} service runs beside others and needs a shared log and read "
            f"models: set {' and '.join(missing)} (or run everything with `aob server dev`)"
        )
    return None
