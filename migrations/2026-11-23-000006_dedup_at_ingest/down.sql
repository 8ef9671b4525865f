UPDATE routing_log SET routed = ARRAY(SELECT jsonb_array_elements_text(routed_to))
WHERE routed IS NULL;
ALTER TABLE routing_log DROP COLUMN routed_to;
ALTER TABLE routing_log ALTER COLUMN routed SET NOT NULL;
ALTER TABLE gw_jobs DROP COLUMN duplicates;
