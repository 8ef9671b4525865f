-- Gateway storage: accepted requests, stage checkpoints and the messageId dedup window.

-- One row per accepted HTTP request; `payload` is the JSON array of normalised events, as
-- text: the gateway produced it with a JSON encoder, and re-validating it as `json` cost a
-- tenth of Postgres' ingest CPU (cast to json to inspect it).
-- Ids are assigned by the single GatewayWriter flush at a time, so commit order equals id
-- order and a reader may safely consume "every id after my checkpoint".
CREATE TABLE gw_jobs (
    id          bigserial   PRIMARY KEY,
    source_id   text        COLLATE "C" NOT NULL,
    received_at timestamptz NOT NULL,
    event_count integer     NOT NULL,
    payload     text        NOT NULL
);

-- Payloads are large and written once: lz4 compresses several times faster than the
-- default pglz (which dominated the ingest profile). Servers built without lz4 keep pglz.
DO $$
BEGIN
    ALTER TABLE gw_jobs ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 not available; gw_jobs.payload keeps the default compression';
END $$;

-- The last id each stage consumed (per partition, for scaling out later).
CREATE TABLE checkpoints (
    stage      text        NOT NULL,
    partition  integer     NOT NULL DEFAULT 0,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, partition)
);

-- messageId dedup window: the first gw_jobs row that carried a messageId for a source.
-- A later job carrying the same (source_id, message_id) is a duplicate. The key is a
-- 128-bit hash of both (computed by Keel, see `store::dedup_key`): a 16-byte memcmp key
-- halves the index work that dominated Postgres' ingest profile with a two-text key, and
-- a collision is negligible (~2^-64 even at billions of rows).
CREATE TABLE dedup (
    key        uuid        PRIMARY KEY,
    source_id  text        COLLATE "C" NOT NULL,
    message_id text        COLLATE "C" NOT NULL,
    job_id     bigint      NOT NULL,
    seen_at    timestamptz NOT NULL
);
-- seen_at grows with insertion order, so a BRIN index makes pruning cheap to maintain.
CREATE INDEX dedup_seen_at_brin ON dedup USING brin (seen_at);
