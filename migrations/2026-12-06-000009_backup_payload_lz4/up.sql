-- backup_jobs.payload gets lz4 like gw_jobs, rt_jobs and wh_jobs already have: a consumed
-- request moves from gw_jobs (lz4) into backup_jobs, which compressed it again with pglz
-- and cost ingest throughput while the raw backup is on. Servers without lz4 keep pglz.
DO $$
BEGIN
    ALTER TABLE backup_jobs ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 not available; backup_jobs.payload keeps the default compression';
END $$;
