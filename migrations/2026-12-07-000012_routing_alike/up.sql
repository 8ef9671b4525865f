-- A request whose events were all routed alike (the same destinations, the same filtered
-- ones: nearly every request) keeps one decision instead of one per event: `routed` is the
-- JSON array of destination ids and `filtered` the {destination id: reason} object for all
-- of its events, and `message_ids` is NULL (the explain API reaches the row through the
-- event's dedup row, so it needs no position). Other requests keep the per-event arrays.
-- Per-event arrays were, per event, a messageId and two JSON values for Postgres to read,
-- group and store again.
ALTER TABLE routing_jobs ALTER COLUMN message_ids DROP NOT NULL;
