-- Read models v7: LLM usage and run budgets (issue 16).
-- llm_usage: one row per AgentUsageRecorded (one agent node attempt); cost_nano_usd is
-- the cost the event recorded, in billionths of a USD (NULL: the model had no price);
-- tenant is the event's, else its run's. recorded_at is the event's time: a tenant's
-- budget period sums the rows recorded since the period began.
CREATE TABLE llm_usage (
    event_id          TEXT PRIMARY KEY,
    run_id            TEXT NOT NULL,
    node_id           TEXT NOT NULL,
    iteration         INTEGER NOT NULL,
    attempt           INTEGER NOT NULL,
    tenant            TEXT NOT NULL,
    model             TEXT NOT NULL,
    llm_calls         INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens      INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    cost_nano_usd     INTEGER,
    recorded_at       INTEGER NOT NULL
);
CREATE INDEX llm_usage_run ON llm_usage (run_id);
CREATE INDEX llm_usage_tenant ON llm_usage (tenant, recorded_at);
-- run_budgets: the `budget` of the definition a run was submitted with (JSON), kept
-- apart from runs.definition, which patches change: no patch can lift a budget.
CREATE TABLE run_budgets (
    run_id TEXT PRIMARY KEY,
    budget TEXT NOT NULL
);
