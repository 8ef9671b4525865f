//! Gateway statements: the group-commit insert into `gw_jobs` + `dedup` (a fast statement for
//! flushes with no duplicate, redone with `ON CONFLICT` when one has), and dedup pruning.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Double, Integer, Text, Timestamptz};
use diesel_async::RunQueryDsl;

use super::CacheExt;
use super::{Store, StoreError};

/// The events of one source and partition in one flush (one or more requests' parts, in
/// request order), to store as a `gw_jobs` row.
#[derive(Debug, Clone)]
pub struct GwJobInsert {
    /// Source workspace id.
    pub source_id: String,
    /// Partition of its events.
    pub partition: i32,
    /// When the gateway received the (first) request.
    pub received_at: DateTime<Utc>,
    /// Number of events in `payload`.
    pub event_count: i32,
    /// JSON array of normalised events.
    pub payload: String,
    /// messageIds of the events, recorded in the dedup window.
    pub message_ids: Vec<String>,
}

/// The `input` step both flush statements start with (one text, so their binds agree): the
/// rows of the flush in order, each with the `gw_jobs` id drawn for it.
macro_rules! flush_input {
    () => {
        r#"
WITH input AS (
    SELECT nextval('gw_jobs_id_seq') AS id, r.source_id, r.received_at, r.event_count, r.payload,
           r.partition, r.ord
    FROM (
        SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::int4[], $4::text[], $7::int4[])
            WITH ORDINALITY AS u(source_id, received_at, event_count, payload, partition, ord)
        ORDER BY ord
    ) r
)"#
    };
}

/// The flush when no messageId of it is in the window yet, as almost always: ids are drawn
/// in request order, every (source, partition) of the flush becomes a `gw_jobs` row and every
/// messageId a `dedup` row naming its job. A plain insert checks uniqueness in the same index descent
/// that inserts the key; `ON CONFLICT` would search the index first and cost a third more of
/// Postgres' time per event. A key already in the window (a client's retry, or two requests
/// of the flush carrying one messageId) fails the statement, which is atomic, and the flush
/// is redone as [`INSERT_FLUSH_DEDUP`]. The dedup rows are the main insert and the `gw_jobs`
/// rows a data-modifying step that runs after it, so a duplicate fails the statement before
/// any payload is written.
const INSERT_FLUSH_FRESH: &str = concat!(
    flush_input!(),
    r#", jobs AS (
    INSERT INTO gw_jobs (id, source_id, received_at, event_count, payload, partition, duplicates)
    SELECT id, source_id, received_at, event_count, payload, partition, '{}' FROM input
)
INSERT INTO dedup (key, job_id, seen_at)
SELECT m.key, i.id, i.received_at
FROM unnest($5::int8[], $6::uuid[]) AS m(ord, key)
JOIN input i ON i.ord = m.ord
-- Key order: concurrent flushes carrying the same messageIds wait for each other in one
-- order and never deadlock.
ORDER BY m.key
"#
);

/// The flush when some messageId may be in the window: as [`INSERT_FLUSH_FRESH`], but a
/// messageId already there gets no dedup row (`ON CONFLICT DO NOTHING`), and each `gw_jobs`
/// row records, in `duplicates`, the keys of its events that did not get their own dedup row,
/// so the processor drops them without a lookup.
const INSERT_FLUSH_DEDUP: &str = concat!(
    flush_input!(),
    r#", keys AS (
    SELECT m.ord, m.key, i.id AS job_id, i.received_at
    FROM unnest($5::int8[], $6::uuid[]) AS m(ord, key)
    JOIN input i ON i.ord = m.ord
), fresh AS (
    INSERT INTO dedup (key, job_id, seen_at)
    SELECT key, job_id, received_at FROM keys
    -- Key order, as above. Within a flush, the earliest request carrying a key owns it.
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
"#
);

/// The bind arrays of one flush, kept so that the flush can be redone with the other
/// statement.
struct Flush {
    source_ids: Vec<String>,
    received: Vec<DateTime<Utc>>,
    counts: Vec<i32>,
    payloads: Vec<String>,
    partitions: Vec<i32>,
    /// Per messageId: the 1-based index of its row in the arrays above.
    ords: Vec<i64>,
    /// Per messageId: its dedup key.
    keys: Vec<uuid::Uuid>,
}

impl Flush {
    /// `sql` (one of the flush statements) with this flush's arrays bound.
    fn query(
        &self,
        sql: &'static str,
    ) -> impl diesel_async::methods::ExecuteDsl<diesel_async::AsyncPgConnection> + Send + '_ {
        diesel::sql_query(sql)
            .bind::<Array<Text>, _>(&self.source_ids)
            .bind::<Array<Timestamptz>, _>(&self.received)
            .bind::<Array<Integer>, _>(&self.counts)
            .bind::<Array<Text>, _>(&self.payloads)
            .bind::<Array<BigInt>, _>(&self.ords)
            .bind::<Array<diesel::sql_types::Uuid>, _>(&self.keys)
            .bind::<Array<Integer>, _>(&self.partitions)
            .cached()
    }
}

const PRUNE_DEDUP: &str = r#"
DELETE FROM dedup WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM dedup
    WHERE seen_at < now() - make_interval(secs => $1)
    LIMIT $2
))
"#;

impl Store {
    /// Commits one group of requests, all or nothing: as [`INSERT_FLUSH_FRESH`], or, when a
    /// messageId of it is already in the window, as [`INSERT_FLUSH_DEDUP`].
    pub async fn insert_gw_jobs(&self, jobs: Vec<GwJobInsert>) -> Result<(), StoreError> {
        let n = jobs.len();
        let mut flush = Flush {
            source_ids: Vec::with_capacity(n),
            received: Vec::with_capacity(n),
            counts: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            partitions: Vec::with_capacity(n),
            ords: Vec::new(),
            keys: Vec::new(),
        };
        for (i, job) in jobs.into_iter().enumerate() {
            let ord = i as i64 + 1;
            flush
                .ords
                .extend(std::iter::repeat_n(ord, job.message_ids.len()));
            flush.keys.extend(
                job.message_ids
                    .iter()
                    .map(|m| super::dedup_key(&job.source_id, m)),
            );
            flush.source_ids.push(job.source_id);
            flush.received.push(job.received_at);
            flush.counts.push(job.event_count);
            flush.payloads.push(job.payload);
            flush.partitions.push(job.partition);
        }
        match self.execute(flush.query(INSERT_FLUSH_FRESH)).await {
            Err(StoreError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                info,
            ))) if info.constraint_name() == Some("dedup_pkey") => {
                metrics::counter!(crate::telemetry::GATEWAY_FLUSH_DUPLICATES_TOTAL).increment(1);
                self.execute(flush.query(INSERT_FLUSH_DEDUP))
                    .await
                    .map(drop)
            }
            other => other.map(drop),
        }
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
