-- Gateway storage: accepted requests, stage checkpoints and the messageId dedup window.

-- One row per accepted HTTP request; `payload` is the JSON array of normalised events.
-- Ids are assigned by the single GatewayWriter flush at a time, so commit order equals id
-- order and a reader may safely consume "every id after my checkpoint".
CREATE TABLE gw_jobs (
    id          bigserial   PRIMARY KEY,
    source_id   text        NOT NULL,
    received_at timestamptz NOT NULL,
    event_count integer     NOT NULL,
    payload     json        NOT NULL
);

-- The last id each stage consumed (per partition, for scaling out later).
CREATE TABLE checkpoints (
    stage      text        NOT NULL,
    partition  integer     NOT NULL DEFAULT 0,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, partition)
);

-- messageId dedup window: the first gw_jobs row that carried a messageId for a source.
-- A later job carrying the same (source_id, message_id) is a duplicate.
CREATE TABLE dedup (
    source_id  text        NOT NULL,
    message_id text        NOT NULL,
    job_id     bigint      NOT NULL,
    seen_at    timestamptz NOT NULL,
    PRIMARY KEY (source_id, message_id)
);
-- seen_at grows with insertion order, so a BRIN index makes pruning cheap to maintain.
CREATE INDEX dedup_seen_at_brin ON dedup USING brin (seen_at);
