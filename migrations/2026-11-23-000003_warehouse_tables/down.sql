DROP TABLE keel_instance;
DROP TABLE wh_jobs;
