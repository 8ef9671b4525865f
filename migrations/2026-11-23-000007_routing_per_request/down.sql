CREATE INDEX rt_jobs_message_id ON rt_jobs (message_id);
INSERT INTO routing_log (source_id, message_id, job_id, routed_to, filtered, processed_at)
SELECT r.source_id, e.mid, r.job_id, r.routed -> (e.i - 1)::int, r.filtered -> (e.i - 1)::int,
       r.processed_at
FROM routing_jobs r CROSS JOIN LATERAL unnest(r.message_ids) WITH ORDINALITY AS e(mid, i);
ALTER TABLE routing_log DROP COLUMN rt_last;
ALTER TABLE routing_log DROP COLUMN rt_first;
DROP TABLE routing_jobs;
