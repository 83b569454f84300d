-- Read models v6 (mirrors sqlite/0006): node states that agree with their run's.
-- status 'waiting': a hitl node whose approval is pending (the run is 'waiting');
-- status 'cancelled': a node still unfinished when its run ended (cancelled, failed or
-- completed without it); carried_from: the run a replayed run carried this node's
-- output over from (the node did not run again).
ALTER TABLE node_runs DROP CONSTRAINT node_runs_status_check;
ALTER TABLE node_runs ADD CONSTRAINT node_runs_status_check
    CHECK (status IN ('scheduled', 'running', 'waiting', 'retrying', 'completed', 'failed',
                      'skipped', 'cancelled'));
ALTER TABLE node_runs ADD COLUMN carried_from TEXT;
