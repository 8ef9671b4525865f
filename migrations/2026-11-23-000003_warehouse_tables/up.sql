-- Warehouse storage: events waiting to be loaded into warehouse destinations, and this
-- database's identity (so checkpoints kept in a warehouse never match a recreated Keel
-- database whose ids start again from 1).

-- One row per (accepted request × warehouse destination): the events of that request the
-- destination takes, as a JSON array (text). The WarehouseUploader reads them in id order
-- and deletes them once every table they touch is loaded.
CREATE TABLE wh_jobs (
    id             bigserial   PRIMARY KEY,
    destination_id text        COLLATE "C" NOT NULL,
    source_id      text        COLLATE "C" NOT NULL,
    event_count    integer     NOT NULL,
    payload        text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wh_jobs_destination_id ON wh_jobs (destination_id, id);

DO $$
BEGIN
    ALTER TABLE wh_jobs ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 not available; wh_jobs.payload keeps the default compression';
END $$;

CREATE TABLE keel_instance (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO keel_instance DEFAULT VALUES;
