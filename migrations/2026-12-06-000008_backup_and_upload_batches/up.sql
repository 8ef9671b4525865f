-- Object storage and raw backup.

-- The batch a batch uploader (warehouse, object store, data lake, ClickHouse, raw backup)
-- is uploading: its job id range is recorded before the upload starts and removed in the
-- transaction that deletes the uploaded jobs. A retry after a failure or a crash uploads
-- exactly this range again, so object names derived from it (`<first>-<last>`) are
-- overwritten, never doubled, even when more jobs arrived meanwhile.
CREATE TABLE upload_batches (
    queue      text        COLLATE "C" PRIMARY KEY,  -- 'wh:<destination id>' or 'backup'
    first_id   bigint      NOT NULL,
    last_id    bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Raw backup: with `[backup]` enabled, the processor moves each request it consumed from
-- `gw_jobs` into this table in its own commit (one statement, `DELETE … RETURNING` feeding
-- the insert), so the gateway's ack path is untouched and no row is lost between the two
-- readers. The backup writer uploads rows in id order and deletes them once the store
-- confirmed the object.
CREATE TABLE backup_jobs (
    id          bigint      PRIMARY KEY,             -- the gw_jobs id
    source_id   text        COLLATE "C" NOT NULL,
    received_at timestamptz NOT NULL,
    partition   integer     NOT NULL,
    event_count integer     NOT NULL,
    payload     text        NOT NULL,
    moved_at    timestamptz NOT NULL DEFAULT now()
);
DO $$
BEGIN
    ALTER TABLE backup_jobs ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 not available; backup_jobs.payload keeps the default compression';
END $$;

-- Rows written by `keel replay`: routed only to these destination ids (NULL: every
-- destination of the source, as for any request). Replayed rows carry an empty
-- `duplicates` list, so the ingest-time messageId window never drops them.
ALTER TABLE gw_jobs ADD COLUMN only_destinations text[];
