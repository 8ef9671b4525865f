-- Duplicates are decided when the gateway commits: each gw_jobs row lists the dedup keys
-- of its events that were already in the window (an earlier request, or another row of the
-- same request, carried them), so the processor needs no dedup lookup. NULL: a row written
-- before this column existed; the processor looks its events up in dedup as before.
ALTER TABLE gw_jobs ADD COLUMN duplicates uuid[];

-- Where an event was routed, as the JSON array the processor has (no per-row conversion
-- to text[]). Rows written before keep `routed`; new rows leave it NULL.
ALTER TABLE routing_log ALTER COLUMN routed DROP NOT NULL;
ALTER TABLE routing_log ADD COLUMN routed_to jsonb;
