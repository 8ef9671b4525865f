ALTER TABLE gw_jobs DROP COLUMN only_destinations;
DROP TABLE backup_jobs;
DROP TABLE upload_batches;
