-- Raw backup packs: the processor's commit now writes, instead of a copy of each consumed
-- request, one `backup_jobs` row per commit and hour holding that hour's backup lines
-- already built and gzipped by Keel (`lines_gz`, one gzip member). The row's id is the
-- lowest `gw_jobs` id it holds, `received_at` the earliest request time, `partition` -1
-- and `source_id` '' (a pack spans partitions and sources). Rows written before this
-- migration keep `payload` and are turned into lines by the backup writer as before.
ALTER TABLE backup_jobs ALTER COLUMN payload DROP NOT NULL;
ALTER TABLE backup_jobs ADD COLUMN lines_gz bytea;
-- Already compressed: stored as is, out of line, never compressed again.
ALTER TABLE backup_jobs ALTER COLUMN lines_gz SET STORAGE EXTERNAL;
