-- Packs cannot be turned back into per-request rows here: refuse while any wait.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM backup_jobs WHERE lines_gz IS NOT NULL) THEN
        RAISE EXCEPTION 'backup_jobs holds packs not yet uploaded; let the backup writer empty it first';
    END IF;
END $$;
ALTER TABLE backup_jobs DROP COLUMN lines_gz;
ALTER TABLE backup_jobs ALTER COLUMN payload SET NOT NULL;
