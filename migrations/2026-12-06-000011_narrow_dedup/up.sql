-- The dedup window keeps only what deciding a duplicate needs: the key (a hash of source
-- and messageId), the job that first carried it and when. The two text columns were read
-- only by the explain API, which knows both (it asks for one messageId and computes the
-- keys of the sources it may come from); writing them cost a third of each dedup row's
-- bytes and WAL at ingest. Rows written before keep the dropped values' bytes on disk (no
-- longer readable) until they are pruned.
ALTER TABLE dedup DROP COLUMN source_id, DROP COLUMN message_id;
