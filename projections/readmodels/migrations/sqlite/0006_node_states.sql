-- Read models v6: node states that agree with their run's.
-- status 'waiting': a hitl node whose approval is pending (the run is 'waiting');
-- status 'cancelled': a node still unfinished when its run ended (cancelled, failed or
-- completed without it); carried_from: the run a replayed run carried this node's
-- output over from (the node did not run again).
-- SQLite cannot alter a CHECK constraint: the table is rebuilt.
CREATE TABLE node_runs_v6 (
    run_id       TEXT NOT NULL,
    node_id      TEXT NOT NULL,
    iteration    INTEGER NOT NULL,
    type         TEXT,
    status       TEXT NOT NULL
        CHECK (status IN ('scheduled', 'running', 'waiting', 'retrying', 'completed', 'failed',
                          'skipped', 'cancelled')),
    attempt      INTEGER NOT NULL DEFAULT 0,
    worker       TEXT,
    output       TEXT,
    error        TEXT,
    skip_reason  TEXT,
    warning      BOOLEAN NOT NULL DEFAULT FALSE,
    scheduled_at INTEGER,
    started_at   INTEGER,
    finished_at  INTEGER,
    carried_from TEXT,
    PRIMARY KEY (run_id, node_id, iteration)
);
INSERT INTO node_runs_v6 (run_id, node_id, iteration, type, status, attempt, worker, output,
                          error, skip_reason, warning, scheduled_at, started_at, finished_at)
SELECT run_id, node_id, iteration, type, status, attempt, worker, output, error, skip_reason,
       warning, scheduled_at, started_at, finished_at
FROM node_runs;
DROP TABLE node_runs;
ALTER TABLE node_runs_v6 RENAME TO node_runs;
