-- Bundles cannot be split back into per-job rows with their ids here: refuse while any wait.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM rt_jobs) THEN
        RAISE EXCEPTION 'rt_jobs holds jobs not yet delivered; let the routers empty it first';
    END IF;
END $$;
ALTER TABLE rt_jobs
    DROP COLUMN ordering_keys,
    DROP COLUMN message_ids,
    DROP COLUMN source_ids,
    DROP COLUMN payloads,
    DROP COLUMN state,
    ADD COLUMN ordering_key    text        COLLATE "C" NOT NULL,
    ADD COLUMN message_id      text        COLLATE "C" NOT NULL,
    ADD COLUMN source_id       text        COLLATE "C" NOT NULL,
    ADD COLUMN payload         text        NOT NULL,
    ADD COLUMN attempts        integer     NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN first_failed_at timestamptz,
    ADD COLUMN last_error      text;
