-- rt_jobs holds bundles: one row per (processor commit, destination, partition) carrying
-- that commit's jobs for the destination in order, instead of one row per job. A per-job
-- row cost an insert, a load and a delete of a heap tuple and two index entries per event,
-- the largest share of Postgres' work after ingest. The i-th job of a row is
-- (ordering_keys[i], message_ids[i], source_ids[i], payloads[i]).
--
-- `state` holds what happened to single jobs of a row that still waits (NULL: nothing):
-- {"<0-based index>": 1} for a job delivered or dead-lettered, or
-- {"<index>": {"a": attempts, "n": next attempt (epoch ms), "f": first failure (epoch
-- ms), "e": last error}} for a job waiting to be retried. A row goes when all its jobs did.
ALTER TABLE rt_jobs
    ADD COLUMN ordering_keys text[],
    ADD COLUMN message_ids   text[],
    ADD COLUMN source_ids    text[],
    ADD COLUMN payloads      text[],
    ADD COLUMN state         jsonb;

-- Rows written before become bundles of one, keeping their retry state.
UPDATE rt_jobs SET
    ordering_keys = ARRAY[ordering_key],
    message_ids   = ARRAY[message_id],
    source_ids    = ARRAY[source_id],
    payloads      = ARRAY[payload],
    state = CASE WHEN attempts > 0 OR first_failed_at IS NOT NULL THEN
        jsonb_build_object('0', jsonb_strip_nulls(jsonb_build_object(
            'a', attempts,
            'n', (extract(epoch FROM next_attempt_at) * 1000)::int8,
            'f', (extract(epoch FROM first_failed_at) * 1000)::int8,
            'e', last_error)))
    END;

ALTER TABLE rt_jobs
    ALTER COLUMN ordering_keys SET NOT NULL,
    ALTER COLUMN message_ids   SET NOT NULL,
    ALTER COLUMN source_ids    SET NOT NULL,
    ALTER COLUMN payloads      SET NOT NULL,
    DROP COLUMN ordering_key,
    DROP COLUMN message_id,
    DROP COLUMN source_id,
    DROP COLUMN payload,
    DROP COLUMN attempts,
    DROP COLUMN next_attempt_at,
    DROP COLUMN first_failed_at,
    DROP COLUMN last_error;

-- A bundle's arrays pass the 2 kB TOAST threshold: lz4 compresses them several times faster
-- than pglz, and so routing_jobs' per-request arrays.
DO $$
BEGIN
    ALTER TABLE rt_jobs ALTER COLUMN payloads SET COMPRESSION lz4;
    ALTER TABLE rt_jobs ALTER COLUMN message_ids SET COMPRESSION lz4;
    ALTER TABLE rt_jobs ALTER COLUMN ordering_keys SET COMPRESSION lz4;
    ALTER TABLE rt_jobs ALTER COLUMN source_ids SET COMPRESSION lz4;
    ALTER TABLE routing_jobs ALTER COLUMN message_ids SET COMPRESSION lz4;
    ALTER TABLE routing_jobs ALTER COLUMN routed SET COMPRESSION lz4;
    ALTER TABLE routing_jobs ALTER COLUMN filtered SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 not available; payloads keep the default compression';
END $$;
