//! Gateway statements: the group-commit insert into `gw_jobs` + `dedup`, and dedup pruning.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Double, Integer, Text, Timestamptz};
use diesel_async::RunQueryDsl;

use super::CacheExt;
use super::{Store, StoreError};

/// One request's events of one partition, to store as a `gw_jobs` row.
#[derive(Debug, Clone)]
pub struct GwJobInsert {
    /// Source workspace id.
    pub source_id: String,
    /// Partition of its events.
    pub partition: i32,
    /// When the gateway received the request.
    pub received_at: DateTime<Utc>,
    /// Number of events in `payload`.
    pub event_count: i32,
    /// JSON array of normalised events.
    pub payload: String,
    /// messageIds of the events, recorded in the dedup window.
    pub message_ids: Vec<String>,
}

/// One statement for a whole flush: ids are drawn in request order, every (request,
/// partition) becomes a `gw_jobs` row and every messageId not yet in the window becomes a
/// `dedup` row naming the job that first carried it. Each `gw_jobs` row records, in
/// `duplicates`, the keys of its events that did not get their own dedup row (already in the
/// window), so the processor drops them without a lookup. A single statement is atomic, so
/// no explicit transaction.
const INSERT_FLUSH: &str = r#"
WITH input AS (
    SELECT nextval('gw_jobs_id_seq') AS id, r.source_id, r.received_at, r.event_count, r.payload,
           r.partition, r.ord
    FROM (
        SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::int4[], $4::text[], $8::int4[])
            WITH ORDINALITY AS u(source_id, received_at, event_count, payload, partition, ord)
        ORDER BY ord
    ) r
), keys AS (
    SELECT m.ord, m.key, m.message_id, i.id AS job_id, i.source_id, i.received_at
    FROM unnest($5::int8[], $6::uuid[], $7::text[]) AS m(ord, key, message_id)
    JOIN input i ON i.ord = m.ord
), fresh AS (
    INSERT INTO dedup (key, source_id, message_id, job_id, seen_at)
    SELECT key, source_id, message_id, job_id, received_at FROM keys
    -- Key order: concurrent flushes carrying the same messageIds (a client's retry) wait
    -- for each other in one order and never deadlock. Within a flush, the earliest request
    -- carrying a key owns it.
    ORDER BY key, ord
    ON CONFLICT DO NOTHING
    RETURNING key, job_id
), dups AS (
    SELECT k.ord, array_agg(k.key) AS keys
    FROM keys k LEFT JOIN fresh f ON f.key = k.key AND f.job_id = k.job_id
    WHERE f.key IS NULL
    GROUP BY k.ord
)
INSERT INTO gw_jobs (id, source_id, received_at, event_count, payload, partition, duplicates)
SELECT i.id, i.source_id, i.received_at, i.event_count, i.payload, i.partition,
       coalesce(d.keys, '{}')
FROM input i LEFT JOIN dups d ON d.ord = i.ord
"#;

const PRUNE_DEDUP: &str = r#"
DELETE FROM dedup WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM dedup
    WHERE seen_at < now() - make_interval(secs => $1)
    LIMIT $2
))
"#;

impl Store {
    /// Commits one group of requests (see [`INSERT_FLUSH`]); all or nothing.
    pub async fn insert_gw_jobs(&self, jobs: Vec<GwJobInsert>) -> Result<(), StoreError> {
        let n = jobs.len();
        let mut source_ids = Vec::with_capacity(n);
        let mut received = Vec::with_capacity(n);
        let mut counts = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let mut partitions = Vec::with_capacity(n);
        let mut ords: Vec<i64> = Vec::new();
        let mut message_ids: Vec<String> = Vec::new();
        let mut keys = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            let ord = i as i64 + 1;
            ords.extend(std::iter::repeat_n(ord, job.message_ids.len()));
            keys.extend(
                job.message_ids
                    .iter()
                    .map(|m| super::dedup_key(&job.source_id, m)),
            );
            message_ids.extend(job.message_ids);
            source_ids.push(job.source_id);
            received.push(job.received_at);
            counts.push(job.event_count);
            payloads.push(job.payload);
            partitions.push(job.partition);
        }
        self.execute(
            diesel::sql_query(INSERT_FLUSH)
                .bind::<Array<Text>, _>(source_ids)
                .bind::<Array<Timestamptz>, _>(received)
                .bind::<Array<Integer>, _>(counts)
                .bind::<Array<Text>, _>(payloads)
                .bind::<Array<BigInt>, _>(ords)
                .bind::<Array<diesel::sql_types::Uuid>, _>(keys)
                .bind::<Array<Text>, _>(message_ids)
                .bind::<Array<Integer>, _>(partitions)
                .cached(),
        )
        .await
        .map(drop)
    }

    /// Deletes up to `limit` dedup rows older than `window_secs`; returns how many went.
    pub async fn prune_dedup(&self, window_secs: f64, limit: i32) -> Result<usize, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            Ok(diesel::sql_query(PRUNE_DEDUP)
                .bind::<Double, _>(window_secs)
                .bind::<Integer, _>(limit)
                .cached()
                .execute(&mut conn)
                .await?)
        })
        .await
    }
}

/// One replayed request part (`keel replay`): stored like an accepted request, with an
/// empty `duplicates` list (the messageId window never drops it) and, optionally, the only
/// destinations it is routed to.
#[derive(Debug, Clone)]
pub struct ReplayInsert {
    /// Source id.
    pub source_id: String,
    /// Partition of its events.
    pub partition: i32,
    /// Number of events.
    pub event_count: i32,
    /// JSON array of the events, as backed up.
    pub payload: String,
}

impl Store {
    /// Stores replayed requests in order (ids follow the slice), in one statement.
    /// `only`: route to these destination ids only (`None`: every destination).
    pub async fn insert_replayed(
        &self,
        rows: Vec<ReplayInsert>,
        only: Option<Vec<String>>,
    ) -> Result<(), StoreError> {
        let mut src = Vec::with_capacity(rows.len());
        let mut part = Vec::with_capacity(rows.len());
        let mut count = Vec::with_capacity(rows.len());
        let mut payload = Vec::with_capacity(rows.len());
        for r in rows {
            src.push(r.source_id);
            part.push(r.partition);
            count.push(r.event_count);
            payload.push(r.payload);
        }
        self.execute(
diesel::sql_query(
                "INSERT INTO gw_jobs (id, source_id, received_at, event_count, payload, partition, duplicates, only_destinations) \
                 SELECT nextval('gw_jobs_id_seq'), s, now(), n, p, k, '{}', $5 FROM ( \
                   SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::int4[]) \
                   WITH ORDINALITY AS u(s, n, p, k, o) ORDER BY o) r",
            )
            .bind::<Array<Text>, _>(src)
            .bind::<Array<Integer>, _>(count)
            .bind::<Array<Text>, _>(payload)
            .bind::<Array<Integer>, _>(part)
            .bind::<diesel::sql_types::Nullable<Array<Text>>, _>(only),
)
        .await
        .map(drop)
    }
}
