-- Read models v1. Rebuildable from the log: drop the file and replay.
-- JSON values are JSON text; booleans are 0/1; times are epoch ms.
-- "partition" and "offset" are quoted: OFFSET is reserved in Postgres and SQL.

CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    workflow_id   TEXT,
    version       INTEGER,
    tag           TEXT,
    status        TEXT NOT NULL
        CHECK (status IN ('running', 'waiting', 'completed', 'failed', 'cancelled')),
    inputs        TEXT,
    output        TEXT,
    error         TEXT,
    error_node_id TEXT,
    revision      INTEGER NOT NULL DEFAULT 0,
    submitted_at  INTEGER NOT NULL,
    submitted_by  TEXT NOT NULL,
    updated_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    trace_id      TEXT NOT NULL DEFAULT '',
    definition    TEXT
);
CREATE INDEX runs_by_submitted ON runs (submitted_at, run_id);
CREATE INDEX runs_by_status ON runs (status, submitted_at, run_id);
CREATE INDEX runs_by_workflow ON runs (workflow_id, submitted_at, run_id);

CREATE TABLE node_runs (
    run_id       TEXT NOT NULL,
    node_id      TEXT NOT NULL,
    iteration    INTEGER NOT NULL,
    type         TEXT,
    status       TEXT NOT NULL
        CHECK (status IN ('scheduled', 'running', 'retrying', 'completed', 'failed', 'skipped')),
    attempt      INTEGER NOT NULL DEFAULT 0,
    worker       TEXT,
    output       TEXT,
    error        TEXT,
    skip_reason  TEXT,
    warning      BOOLEAN NOT NULL DEFAULT FALSE,
    scheduled_at INTEGER,
    started_at   INTEGER,
    finished_at  INTEGER,
    PRIMARY KEY (run_id, node_id, iteration)
);

CREATE TABLE workflows (
    workflow_id TEXT NOT NULL,
    version     INTEGER NOT NULL,
    name        TEXT,
    definition  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE tags (
    tag         TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    version     INTEGER NOT NULL,
    moved_at    INTEGER NOT NULL,
    moved_by    TEXT NOT NULL
);

CREATE TABLE timeline (
    topic        TEXT NOT NULL,
    "partition"  INTEGER NOT NULL,
    "offset"     INTEGER NOT NULL,
    event_id     TEXT NOT NULL UNIQUE,
    key          TEXT NOT NULL,
    type         TEXT NOT NULL,
    occurred_at  INTEGER NOT NULL,
    actor        TEXT NOT NULL,
    trace_id     TEXT NOT NULL,
    causation_id TEXT,
    data         TEXT NOT NULL,
    PRIMARY KEY (topic, "partition", "offset")
);
CREATE INDEX timeline_by_key ON timeline (key, "offset");

CREATE TABLE patches (
    run_id      TEXT NOT NULL,
    patch_id    TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('proposed', 'applied', 'rejected')),
    operations  TEXT,
    reason      TEXT NOT NULL DEFAULT '',
    reasons     TEXT,
    revision    INTEGER,
    added_nodes TEXT,
    proposed_at INTEGER,
    decided_at  INTEGER,
    PRIMARY KEY (run_id, patch_id)
);

CREATE TABLE approvals (
    approval_id  TEXT PRIMARY KEY,
    run_id       TEXT NOT NULL,
    node_id      TEXT NOT NULL,
    iteration    INTEGER NOT NULL,
    status       TEXT NOT NULL
        CHECK (status IN ('pending', 'approved', 'rejected', 'cancelled')),
    message      TEXT NOT NULL,
    payload      TEXT,
    approvers    TEXT NOT NULL,
    deadline     INTEGER,
    decided_by   TEXT,
    comments     TEXT,
    requested_at INTEGER NOT NULL,
    decided_at   INTEGER
);
CREATE INDEX approvals_by_run ON approvals (run_id, requested_at);
CREATE INDEX approvals_by_status ON approvals (status, requested_at);

CREATE TABLE timers (
    timer_id  TEXT PRIMARY KEY,
    run_id    TEXT NOT NULL,
    fire_at   INTEGER NOT NULL,
    purpose   TEXT NOT NULL,
    node_id   TEXT NOT NULL,
    iteration INTEGER NOT NULL,
    attempt   INTEGER NOT NULL,
    fired     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX timers_due ON timers (fire_at, timer_id) WHERE NOT fired;
CREATE INDEX timers_by_run ON timers (run_id);

CREATE TABLE projector_offsets (
    topic       TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, "partition")
);
