-- Delivery storage: one row per (event × destination) waiting for delivery, and the
-- dead-letter queue for jobs whose retry policy is spent or that were refused for good.

CREATE TABLE rt_jobs (
    id              bigserial   PRIMARY KEY,
    destination_id  text        COLLATE "C" NOT NULL,
    ordering_key    text        COLLATE "C" NOT NULL,
    message_id      text        COLLATE "C" NOT NULL,
    source_id       text        COLLATE "C" NOT NULL,
    -- The destination-ready request (method, endpoint, headers, params, body) as JSON text.
    payload         text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    first_failed_at timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- Routers read their destination's jobs in id order.
CREATE INDEX rt_jobs_destination_id ON rt_jobs (destination_id, id);
CREATE INDEX rt_jobs_message_id ON rt_jobs (message_id);

CREATE TABLE dlq_jobs (
    id             bigint      PRIMARY KEY,   -- the rt_jobs id it had
    destination_id text        COLLATE "C" NOT NULL,
    ordering_key   text        COLLATE "C" NOT NULL,
    message_id     text        COLLATE "C" NOT NULL,
    source_id      text        COLLATE "C" NOT NULL,
    payload        json        NOT NULL,
    attempts       integer     NOT NULL,
    reason         text        NOT NULL,
    last_status    integer,
    last_response  text,
    created_at     timestamptz NOT NULL,
    failed_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dlq_jobs_destination_id ON dlq_jobs (destination_id, id);
CREATE INDEX dlq_jobs_message_id ON dlq_jobs (message_id);

-- What the processor decided for each event, kept for the explain endpoint while the
-- dedup window lasts: which destinations it was routed to and which filtered it out.
CREATE TABLE routing_log (
    source_id   text        COLLATE "C" NOT NULL,
    message_id  text        COLLATE "C" NOT NULL,
    job_id      bigint      NOT NULL,
    routed      text[]      NOT NULL,
    filtered    jsonb       NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX routing_log_message_id ON routing_log (message_id);
CREATE INDEX routing_log_processed_at_brin ON routing_log USING brin (processed_at);

-- lz4 compresses payloads several times faster than pglz; servers without it keep pglz.
DO $$
BEGIN
    ALTER TABLE rt_jobs ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE dlq_jobs ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 not available; payloads keep the default compression';
END $$;
