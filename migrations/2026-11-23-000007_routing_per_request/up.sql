-- Routing decisions per stored request instead of per event, and no messageId index on
-- rt_jobs: both were per-event btree inserts on random keys, a third of the processor's
-- cost in Postgres. The explain endpoint finds an event's routing row through its dedup
-- row (key -> gw_jobs id) and its pending jobs through the rt_jobs id range the commit
-- wrote, per destination on (destination_id, id).

-- One row per consumed gw_jobs row. The arrays run in parallel: the i-th event's messageId,
-- the destinations it was routed to (a JSON array) and those that filtered it out
-- ({destination id: reason}). rt_first/rt_last: the lowest and highest rt_jobs id the
-- processor's commit wrote (NULL when it wrote none).
CREATE TABLE routing_jobs (
    job_id       bigint      NOT NULL,
    source_id    text        COLLATE "C" NOT NULL,
    message_ids  text[]      NOT NULL,
    routed       jsonb       NOT NULL,
    filtered     jsonb       NOT NULL,
    rt_first     bigint,
    rt_last      bigint,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX routing_jobs_job_id ON routing_jobs (job_id);
CREATE INDEX routing_jobs_processed_at_brin ON routing_jobs USING brin (processed_at);

-- routing_log keeps the per-event records that have no gw_jobs row (replays of dead
-- letters) and the rows written before this migration (rt_first NULL: their pending jobs
-- are searched in the destination's whole queue).
ALTER TABLE routing_log ADD COLUMN rt_first bigint;
ALTER TABLE routing_log ADD COLUMN rt_last bigint;

DROP INDEX rt_jobs_message_id;
