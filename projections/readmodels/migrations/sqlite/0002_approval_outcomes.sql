-- Read models v2: what resolving an approval needs.
-- attempt: the node attempt that asked (its outcome event names it);
-- on_timeout: what the deadline means (approve, reject or fail);
-- decision: the winning decision as given ("fail" when a timeout fails the node);
-- decision_event_id: the winning ApprovalDecided, so a racing decider can tell it lost.
ALTER TABLE approvals ADD COLUMN attempt INTEGER;
ALTER TABLE approvals ADD COLUMN on_timeout TEXT;
ALTER TABLE approvals ADD COLUMN decision TEXT;
ALTER TABLE approvals ADD COLUMN decision_event_id TEXT;
