-- Read models v4: the tenant (namespace) a run belongs to, from RunSubmitted.tenant;
-- runs submitted before tenants existed belong to the default tenant.
ALTER TABLE runs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
CREATE INDEX runs_by_tenant ON runs (tenant, submitted_at, run_id);
