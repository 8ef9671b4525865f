-- Rows with one decision for the whole request cannot name their events: they are dropped
-- (the explain API then reports those events as it does once routing rows are pruned).
DELETE FROM routing_jobs WHERE message_ids IS NULL;
ALTER TABLE routing_jobs ALTER COLUMN message_ids SET NOT NULL;
