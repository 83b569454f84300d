-- Read models v5: the tenant (namespace) of workflows and tags, from
-- WorkflowCreated.tenant / TagMoved.tenant; older ones belong to the default tenant.
-- Ids and tag names stay unique across tenants: the API refuses to reuse another
-- tenant's, so one tenant's definitions never run under another's name.
ALTER TABLE workflows ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE tags ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
