-- Read models v1, PostgreSQL: the tables of migrations/sqlite/0001_init.sql, column for
-- column, so both engines run the same projection plans and queries.
-- Rebuildable from the log: drop the schema and replay.
-- JSON values are `json` (validated, kept as written, so rebuilds compare equal);
-- times and offsets are BIGINT (epoch ms do not fit INTEGER); identifiers sort
-- bytewise (COLLATE "C") like SQLite's, so ordering and list cursors agree.
-- "partition" and "offset" are quoted: OFFSET is reserved.

CREATE TABLE runs (
    run_id        TEXT COLLATE "C" PRIMARY KEY,
    workflow_id   TEXT COLLATE "C",
    version       INTEGER,
    tag           TEXT COLLATE "C",
    status        TEXT NOT NULL
        CHECK (status IN ('running', 'waiting', 'completed', 'failed', 'cancelled')),
    inputs        JSON,
    output        JSON,
    error         TEXT,
    error_node_id TEXT COLLATE "C",
    revision      INTEGER NOT NULL DEFAULT 0,
    submitted_at  BIGINT NOT NULL,
    submitted_by  TEXT NOT NULL,
    updated_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    trace_id      TEXT NOT NULL DEFAULT '',
    definition    JSON
);
CREATE INDEX runs_by_submitted ON runs (submitted_at, run_id);
CREATE INDEX runs_by_status ON runs (status, submitted_at, run_id);
CREATE INDEX runs_by_workflow ON runs (workflow_id, submitted_at, run_id);

CREATE TABLE node_runs (
    run_id       TEXT COLLATE "C" NOT NULL,
    node_id      TEXT COLLATE "C" NOT NULL,
    iteration    INTEGER NOT NULL,
    type         TEXT,
    status       TEXT NOT NULL
        CHECK (status IN ('scheduled', 'running', 'retrying', 'completed', 'failed', 'skipped')),
    attempt      INTEGER NOT NULL DEFAULT 0,
    worker       TEXT,
    output       JSON,
    error        TEXT,
    skip_reason  TEXT,
    warning      BOOLEAN NOT NULL DEFAULT FALSE,
    scheduled_at BIGINT,
    started_at   BIGINT,
    finished_at  BIGINT,
    PRIMARY KEY (run_id, node_id, iteration)
);

CREATE TABLE workflows (
    workflow_id TEXT COLLATE "C" NOT NULL,
    version     INTEGER NOT NULL,
    name        TEXT,
    definition  JSON NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE tags (
    tag         TEXT COLLATE "C" PRIMARY KEY,
    workflow_id TEXT COLLATE "C" NOT NULL,
    version     INTEGER NOT NULL,
    moved_at    BIGINT NOT NULL,
    moved_by    TEXT NOT NULL
);

CREATE TABLE timeline (
    topic        TEXT COLLATE "C" NOT NULL,
    "partition"  INTEGER NOT NULL,
    "offset"     BIGINT NOT NULL,
    event_id     TEXT COLLATE "C" NOT NULL UNIQUE,
    key          TEXT COLLATE "C" NOT NULL,
    type         TEXT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    trace_id     TEXT NOT NULL,
    causation_id TEXT,
    data         JSON NOT NULL,
    PRIMARY KEY (topic, "partition", "offset")
);
CREATE INDEX timeline_by_key ON timeline (key, "offset");

CREATE TABLE patches (
    run_id      TEXT COLLATE "C" NOT NULL,
    patch_id    TEXT COLLATE "C" NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('proposed', 'applied', 'rejected')),
    operations  JSON,
    reason      TEXT NOT NULL DEFAULT '',
    reasons     JSON,
    revision    INTEGER,
    added_nodes JSON,
    proposed_at BIGINT,
    decided_at  BIGINT,
    PRIMARY KEY (run_id, patch_id)
);

CREATE TABLE approvals (
    approval_id  TEXT COLLATE "C" PRIMARY KEY,
    run_id       TEXT COLLATE "C" NOT NULL,
    node_id      TEXT COLLATE "C" NOT NULL,
    iteration    INTEGER NOT NULL,
    status       TEXT NOT NULL
        CHECK (status IN ('pending', 'approved', 'rejected', 'cancelled')),
    message      TEXT NOT NULL,
    payload      JSON,
    approvers    JSON NOT NULL,
    deadline     BIGINT,
    decided_by   TEXT,
    comments     TEXT,
    requested_at BIGINT NOT NULL,
    decided_at   BIGINT
);
CREATE INDEX approvals_by_run ON approvals (run_id, requested_at);
CREATE INDEX approvals_by_status ON approvals (status, requested_at);

CREATE TABLE timers (
    timer_id  TEXT COLLATE "C" PRIMARY KEY,
    run_id    TEXT COLLATE "C" NOT NULL,
    fire_at   BIGINT NOT NULL,
    purpose   TEXT NOT NULL,
    node_id   TEXT COLLATE "C" NOT NULL,
    iteration INTEGER NOT NULL,
    attempt   INTEGER NOT NULL,
    fired     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX timers_due ON timers (fire_at, timer_id) WHERE NOT fired;
CREATE INDEX timers_by_run ON timers (run_id);

CREATE TABLE projector_offsets (
    topic       TEXT COLLATE "C" NOT NULL,
    "partition" INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, "partition")
);
