-- The text columns come back empty (NULL) for the rows written since: the older explain
-- API does not find those events by messageId until they leave the window, while
-- duplicates are still decided by the key.
ALTER TABLE dedup
    ADD COLUMN source_id  text COLLATE "C",
    ADD COLUMN message_id text COLLATE "C";
