-- Read models v3 (mirrors sqlite/0003): who proposed a patch and how its review went.
-- node_id: the agent node that proposed it (NULL: a person, through the API);
-- review: NULL (no review: auto policy), 'pending', 'approved' or 'rejected';
-- reviewed_by, review_reason, reviewed_at: the reviewer's decision.
ALTER TABLE patches ADD COLUMN node_id TEXT;
ALTER TABLE patches ADD COLUMN review TEXT;
ALTER TABLE patches ADD COLUMN reviewed_by TEXT;
ALTER TABLE patches ADD COLUMN review_reason TEXT;
ALTER TABLE patches ADD COLUMN reviewed_at BIGINT;
