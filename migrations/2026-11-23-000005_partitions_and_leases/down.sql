DROP TABLE lease_history;
DROP TABLE leases;
DROP TABLE nodes;
DROP TABLE cluster_settings;
ALTER TABLE dlq_jobs DROP COLUMN partition;
ALTER TABLE rt_jobs DROP COLUMN partition;
ALTER TABLE gw_jobs DROP COLUMN partition;
