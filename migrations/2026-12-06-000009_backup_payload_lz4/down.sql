DO $$
BEGIN
    ALTER TABLE backup_jobs ALTER COLUMN payload SET COMPRESSION pglz;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    NULL;
END $$;
