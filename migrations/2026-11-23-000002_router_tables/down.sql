DROP TABLE routing_log;
DROP TABLE dlq_jobs;
DROP TABLE rt_jobs;
