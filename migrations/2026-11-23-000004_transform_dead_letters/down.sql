ALTER TABLE dlq_jobs DROP COLUMN stage;
