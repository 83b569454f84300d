-- Read models v7 (mirrors sqlite/0007): LLM usage and run budgets (issue 16).
CREATE TABLE llm_usage (
    event_id          TEXT PRIMARY KEY,
    run_id            TEXT NOT NULL,
    node_id           TEXT NOT NULL,
    iteration         BIGINT NOT NULL,
    attempt           BIGINT NOT NULL,
    tenant            TEXT NOT NULL,
    model             TEXT NOT NULL,
    llm_calls         BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    total_tokens      BIGINT NOT NULL,
    cached_tokens     BIGINT NOT NULL,
    cost_nano_usd     BIGINT,
    recorded_at       BIGINT NOT NULL
);
CREATE INDEX llm_usage_run ON llm_usage (run_id);
CREATE INDEX llm_usage_tenant ON llm_usage (tenant, recorded_at);
CREATE TABLE run_budgets (
    run_id TEXT PRIMARY KEY,
    budget TEXT NOT NULL
);
