-- Read models v16 (issue 16): approvals that organisations need.
-- policy: what deciding needs, from the node's config:
--   {quorum, reject_quorum, allow_self_approval, signals, escalation_levels};
-- votes: the votes of a quorum approval, each voter once, in log order:
--   [{voter, decision, comments, at, event_id}];
-- level: the escalation level reached (0: the first group).
ALTER TABLE approvals ADD COLUMN policy TEXT;
ALTER TABLE approvals ADD COLUMN votes TEXT;
ALTER TABLE approvals ADD COLUMN level INTEGER NOT NULL DEFAULT 0;
