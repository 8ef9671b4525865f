DROP TABLE dedup;
DROP TABLE checkpoints;
DROP TABLE gw_jobs;
