//! Router and admin statements: load a destination's jobs in id order, apply a batch of
//! delivery outcomes (delete delivered, reschedule retries, move dead jobs to `dlq_jobs`) in
//! one transaction, list and replay the DLQ, and gather what is known about one event.

use super::CacheExt;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, RunQueryDsl};
use scoped_futures::ScopedFutureExt;
use serde::Serialize;

use super::{Store, StoreError};

/// A destination's newest dead letter.
#[derive(Debug, QueryableByName)]
struct NewestDead {
    #[diesel(sql_type = Text)]
    destination_id: String,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Timestamptz)]
    failed_at: DateTime<Utc>,
}

/// A job as a router holds it.
#[derive(Debug, Clone, QueryableByName)]
pub struct RtJob {
    /// Row id (delivery order within a key).
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// userId, else anonymousId.
    #[diesel(sql_type = Text)]
    pub ordering_key: String,
    /// The event's messageId.
    #[diesel(sql_type = Text)]
    pub message_id: String,
    /// Destination-ready payload as JSON text.
    #[diesel(sql_type = Text)]
    pub payload: String,
    /// Attempts made so far.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// Not to be tried before this time.
    #[diesel(sql_type = Timestamptz)]
    pub next_attempt_at: DateTime<Utc>,
    /// When the first attempt failed, if one did.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub first_failed_at: Option<DateTime<Utc>>,
}

/// A failed attempt to record: the job stays, to be retried.
#[derive(Debug, Clone)]
pub struct RetryUpdate {
    /// Job id.
    pub id: i64,
    /// Attempts made, this one included.
    pub attempts: i32,
    /// Not before this time.
    pub next_attempt_at: DateTime<Utc>,
    /// When its first attempt failed.
    pub first_failed_at: DateTime<Utc>,
    /// What went wrong.
    pub error: String,
}

/// A job to move to the DLQ.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Job id.
    pub id: i64,
    /// Attempts made.
    pub attempts: i32,
    /// Why.
    pub reason: String,
    /// Last HTTP status.
    pub last_status: Option<i32>,
    /// First 1 KB of the last response.
    pub last_response: Option<String>,
}

/// Delivery outcomes to record together.
#[derive(Debug, Default)]
pub struct StatusBatch {
    /// Delivered: delete.
    pub delivered: Vec<i64>,
    /// To retry.
    pub retries: Vec<RetryUpdate>,
    /// To dead-letter.
    pub dead: Vec<DeadLetter>,
}

impl StatusBatch {
    /// Nothing to record.
    pub fn is_empty(&self) -> bool {
        self.delivered.is_empty() && self.retries.is_empty() && self.dead.is_empty()
    }

    /// Puts an unwritten batch back in front of what accumulated since.
    pub fn merge_front(&mut self, mut older: StatusBatch) {
        older.delivered.append(&mut self.delivered);
        older.retries.append(&mut self.retries);
        older.dead.append(&mut self.dead);
        *self = older;
    }

    /// Number of outcomes held.
    pub fn len(&self) -> usize {
        self.delivered.len() + self.retries.len() + self.dead.len()
    }
}

/// A dead-lettered job, as the admin API lists it.
#[derive(Debug, Clone, QueryableByName, Serialize)]
pub struct DlqJob {
    /// The rt_jobs id it had.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// Destination id.
    #[diesel(sql_type = Text)]
    pub destination_id: String,
    /// Ordering key.
    #[diesel(sql_type = Text)]
    pub ordering_key: String,
    /// messageId.
    #[diesel(sql_type = Text)]
    pub message_id: String,
    /// Attempts made.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// Why it was dead-lettered.
    #[diesel(sql_type = Text)]
    pub reason: String,
    /// Last HTTP status.
    #[diesel(sql_type = Nullable<Integer>)]
    pub last_status: Option<i32>,
    /// First 1 KB of the last response.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_response: Option<String>,
    /// When it was dead-lettered.
    #[diesel(sql_type = Timestamptz)]
    pub failed_at: DateTime<Utc>,
    /// `delivery` (the router gave up) or `transform` (a script failed before delivery).
    #[diesel(sql_type = Text)]
    pub stage: String,
    /// What it would have sent (`delivery`: the request) or the event (`transform`), as
    /// stored; the admin API redacts secrets before showing it.
    #[diesel(sql_type = Text)]
    pub payload: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl Store {
    /// Up to `limit` jobs of `destination` in `partitions` with id > `after`, in id order.
    /// (Every writer of `rt_jobs` takes the order lock, so ids commit in increasing order
    /// and nothing below `after` can appear later.)
    pub async fn load_rt_jobs(
        &self,
        destination: &str,
        partitions: &[i32],
        after: i64,
        limit: i64,
    ) -> Result<Vec<RtJob>, StoreError> {
        // Walk the (destination_id, id) index in order. A queue table's statistics are
        // always stale ("id > after" looks nearly empty), and the planner then prefers a
        // bitmap scan plus a sort of the whole window, which spills to disk: many times
        // slower.
        let query = diesel::sql_query(
            "SELECT id, ordering_key, message_id, payload, attempts, next_attempt_at, first_failed_at \
             FROM rt_jobs WHERE destination_id = $1 AND id > $2 AND partition = ANY($4) ORDER BY id LIMIT $3",
        )
        .bind::<Text, _>(destination)
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(limit)
        .bind::<Array<Integer>, _>(partitions)
        .cached();
        self.load_planned(
            "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off",
            query,
        )
        .await
    }

    /// Records a batch of outcomes in one transaction (the batch is kept for a retry).
    /// Deliveries are recorded whoever holds the job's partition now (the destination has
    /// the event); retries and dead letters only while this node still holds it.
    pub async fn apply_status_ref(&self, batch: &StatusBatch) -> Result<(), StoreError> {
        let delivered = batch.delivered.clone();
        if batch.retries.is_empty() && batch.dead.is_empty() {
            // The common case, deliveries only: one statement is atomic by itself, which
            // saves the BEGIN and COMMIT round trips of a transaction.
            return self
                .timed(async {
                    let mut conn = self.conn().await?;
                    delete_delivered(&mut conn, delivered).await
                })
                .await;
        }
        let node = self.node.clone();
        // A job may fail twice before a write; only its latest state counts.
        let mut latest = std::collections::HashMap::new();
        for r in &batch.retries {
            latest.insert(r.id, r.clone());
        }
        let retries: Vec<_> = latest.into_values().collect();
        let dead = batch.dead.clone();
        self.timed(async {
            let mut conn = self.conn().await?;
            conn.transaction::<_, StoreError, _>(|conn| {
                async move {
                    if !delivered.is_empty() {
                        delete_delivered(conn, delivered).await?;
                    }
                    if !retries.is_empty() {
                        let (mut ids, mut att, mut next, mut first, mut err) = (vec![], vec![], vec![], vec![], vec![]);
                        for r in retries {
                            ids.push(r.id);
                            att.push(r.attempts);
                            next.push(r.next_attempt_at);
                            first.push(r.first_failed_at);
                            err.push(r.error);
                        }
                        diesel::sql_query(
                            "UPDATE rt_jobs SET attempts = u.a, next_attempt_at = u.n, \
                             first_failed_at = coalesce(rt_jobs.first_failed_at, u.f), last_error = u.e \
                             FROM unnest($1::int8[], $2::int4[], $3::timestamptz[], $4::timestamptz[], $5::text[]) AS u(id, a, n, f, e) \
                             WHERE rt_jobs.id = u.id \
                             AND rt_jobs.partition IN (SELECT partition FROM leases WHERE owner = $6)",
                        )
                        .bind::<Array<BigInt>, _>(ids)
                        .bind::<Array<Integer>, _>(att)
                        .bind::<Array<Timestamptz>, _>(next)
                        .bind::<Array<Timestamptz>, _>(first)
                        .bind::<Array<Text>, _>(err)
                        .bind::<Text, _>(&*node)
                        .cached()
                        .execute(conn)
                        .await?;
                    }
                    if !dead.is_empty() {
                        let (mut ids, mut att, mut reason, mut status, mut resp) = (vec![], vec![], vec![], vec![], vec![]);
                        for d in dead {
                            ids.push(d.id);
                            att.push(d.attempts);
                            reason.push(d.reason);
                            status.push(d.last_status);
                            resp.push(d.last_response);
                        }
                        diesel::sql_query(
                            "WITH moved AS (DELETE FROM rt_jobs WHERE id = ANY($1) \
                               AND partition IN (SELECT partition FROM leases WHERE owner = $6) RETURNING *) \
                             INSERT INTO dlq_jobs (id, destination_id, ordering_key, message_id, source_id, payload, attempts, \
                                                   reason, last_status, last_response, created_at, partition) \
                             SELECT m.id, m.destination_id, m.ordering_key, m.message_id, m.source_id, m.payload::json, u.a, \
                                    u.r, u.s, u.b, m.created_at, m.partition \
                             FROM moved m JOIN unnest($1::int8[], $2::int4[], $3::text[], $4::int4[], $5::text[]) AS u(id, a, r, s, b) \
                             ON u.id = m.id ON CONFLICT (id) DO NOTHING",
                        )
                        .bind::<Array<BigInt>, _>(ids)
                        .bind::<Array<Integer>, _>(att)
                        .bind::<Array<Text>, _>(reason)
                        .bind::<Array<Nullable<Integer>>, _>(status)
                        .bind::<Array<Nullable<Text>>, _>(resp)
                        .bind::<Text, _>(&*node)
                        .cached()
                        .execute(conn)
                        .await?;
                    }
                    Ok(())
                }
                .scope_boxed()
            })
            .await
        })
        .await
    }

    /// Dead-lettered jobs, oldest first, optionally of one destination.
    pub async fn list_dlq(
        &self,
        destination: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DlqJob>, StoreError> {
        self.load_all(
diesel::sql_query(
                "SELECT id, destination_id, ordering_key, message_id, attempts, reason, last_status, last_response, failed_at, stage, payload \
                 FROM dlq_jobs WHERE ($1::text IS NULL OR destination_id = $1) ORDER BY id LIMIT $2",
            )
            .bind::<Nullable<Text>, _>(destination)
            .bind::<BigInt, _>(limit)
            .cached(),
)
        .await
    }

    /// The newest dead letter's reason and time of each of `destinations` that has one
    /// (one index step per destination).
    pub async fn newest_dead_letters_of(
        &self,
        destinations: Vec<String>,
    ) -> Result<std::collections::HashMap<String, (String, DateTime<Utc>)>, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let rows: Vec<NewestDead> = diesel::sql_query(
                "SELECT d.id AS destination_id, j.reason, j.failed_at FROM unnest($1::text[]) AS d(id) \
                 CROSS JOIN LATERAL (SELECT reason, failed_at FROM dlq_jobs WHERE destination_id = d.id \
                 ORDER BY id DESC LIMIT 1) j",
            )
            .bind::<Array<Text>, _>(destinations)
            .cached()
            .load(&mut conn)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| (r.destination_id, (r.reason, r.failed_at)))
                .collect())
        })
        .await
    }

    /// Processor-stage dead letters (the events themselves), oldest first; selectors as in
    /// [`Store::replay_dlq`].
    pub async fn transform_dead_letters(
        &self,
        destination: Option<String>,
        ids: Option<Vec<i64>>,
        limit: i64,
    ) -> Result<Vec<TransformDeadLetter>, StoreError> {
        self.load_all(
diesel::sql_query(
                "SELECT id, destination_id, ordering_key, message_id, source_id, payload::text AS payload \
                 FROM dlq_jobs WHERE stage = 'transform' AND ($1::text IS NULL OR destination_id = $1) \
                 AND ($2::int8[] IS NULL OR id = ANY($2)) ORDER BY id LIMIT $3",
            )
            .bind::<Nullable<Text>, _>(destination)
            .bind::<Nullable<Array<BigInt>>, _>(ids)
            .bind::<BigInt, _>(limit)
            .cached(),
)
        .await
    }

    /// Moves dead-lettered jobs back to `rt_jobs` as new jobs (fresh attempts), keeping
    /// their relative order; filters combine (destination and/or ids; neither = all). Each
    /// new job gets a `routing_log` row naming its id, where explain finds it.
    /// Returns how many moved.
    pub async fn replay_dlq(
        &self,
        destination: Option<String>,
        ids: Option<Vec<i64>>,
    ) -> Result<i64, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            conn.transaction::<_, StoreError, _>(|conn| {
                async move {
                    super::cluster::take_order_lock(conn).await?;
                    let rows: Vec<Count> = diesel::sql_query(
                        "WITH moved AS ( \
                           DELETE FROM dlq_jobs WHERE stage = 'delivery' AND ($1::text IS NULL OR destination_id = $1) AND ($2::int8[] IS NULL OR id = ANY($2)) \
                           RETURNING id, destination_id, ordering_key, message_id, source_id, payload, partition), \
                         ins AS ( \
                           INSERT INTO rt_jobs (destination_id, ordering_key, message_id, source_id, payload, partition) \
                           SELECT destination_id, ordering_key, message_id, source_id, payload::text, partition FROM moved ORDER BY id \
                           RETURNING id, destination_id, message_id, source_id), \
                         logged AS ( \
                           INSERT INTO routing_log (source_id, message_id, job_id, routed_to, filtered, rt_first, rt_last) \
                           SELECT source_id, message_id, 0, jsonb_build_array(destination_id), '{}'::jsonb, id, id FROM ins) \
                         SELECT count(*) AS n FROM ins",
                    )
                    .bind::<Nullable<Text>, _>(destination)
                    .bind::<Nullable<Array<BigInt>>, _>(ids)
                    .cached()
                    .load(conn)
                    .await?;
                    Ok(rows.into_iter().next().map_or(0, |r| r.n))
                }
                .scope_boxed()
            })
            .await
        })
        .await
    }
}

/// A processor-stage dead letter: the event a script failed on.
#[derive(Debug, QueryableByName)]
pub struct TransformDeadLetter {
    /// Its id.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// Destination id.
    #[diesel(sql_type = Text)]
    pub destination_id: String,
    /// Ordering key.
    #[diesel(sql_type = Text)]
    pub ordering_key: String,
    /// messageId.
    #[diesel(sql_type = Text)]
    pub message_id: String,
    /// Source id.
    #[diesel(sql_type = Text)]
    pub source_id: String,
    /// The event (JSON text).
    #[diesel(sql_type = Text)]
    pub payload: String,
}

#[derive(QueryableByName)]
struct Doc {
    #[diesel(sql_type = Text)]
    doc: String,
}

/// The explain document. An event's routing decision is in the `routing_jobs` row of the
/// request its dedup row names (or, for dead-letter replays, in `routing_log`); its pending
/// jobs are found per destination it was routed to, in the `rt_jobs` id range that routing
/// row's commit wrote. Jobs no retained routing row covers — older than the retention
/// window (a long backlog, an open circuit) or written before migration 000007 — all have
/// ids below the range of the oldest retained `routing_jobs` row, so they are searched in
/// that stretch of the primary key, usually empty.
const EXPLAIN: &str = r#"
WITH stored AS (
  SELECT d.source_id, d.job_id, d.seen_at FROM dedup d WHERE d.key = ANY($2) AND d.message_id = $1
), routing AS (
  SELECT r.source_id, r.job_id, r.routed -> (e.i - 1)::int AS routed,
         r.filtered -> (e.i - 1)::int AS filtered, r.processed_at, r.rt_first, r.rt_last
  FROM stored s
  CROSS JOIN LATERAL (SELECT * FROM routing_jobs rj WHERE rj.job_id = s.job_id) r
  CROSS JOIN LATERAL unnest(r.message_ids) WITH ORDINALITY AS e(mid, i)
  WHERE e.mid = $1
  UNION ALL
  SELECT source_id, job_id, coalesce(routed_to, to_jsonb(routed)), filtered, processed_at,
         rt_first, rt_last
  FROM routing_log WHERE message_id = $1
), pending AS (
  SELECT j.id, j.destination_id, j.attempts, j.next_attempt_at, j.last_error
  FROM routing r
  CROSS JOIN LATERAL jsonb_array_elements_text(
      CASE WHEN jsonb_typeof(r.routed) = 'array' THEN r.routed ELSE '[]' END) AS t(dest)
  CROSS JOIN LATERAL (
      SELECT id, destination_id, attempts, next_attempt_at, last_error FROM rt_jobs
      WHERE destination_id = t.dest AND id BETWEEN r.rt_first AND r.rt_last
        AND message_id = $1) j
  WHERE r.rt_first IS NOT NULL
  UNION
  SELECT id, destination_id, attempts, next_attempt_at, last_error FROM rt_jobs
  WHERE id < coalesce((SELECT rt_first FROM routing_jobs WHERE rt_first IS NOT NULL
                       ORDER BY job_id LIMIT 1), 9223372036854775807)
    AND message_id = $1
)
SELECT json_build_object(
  'stored', (SELECT coalesce(json_agg(json_build_object(
        'source_id', s.source_id, 'job_id', s.job_id, 'received_at', s.seen_at,
        'processed', NOT EXISTS (SELECT 1 FROM gw_jobs g WHERE g.id = s.job_id))), '[]'::json)
      FROM stored s),
  'routing', (SELECT coalesce(json_agg(json_build_object(
        'source_id', source_id, 'job_id', job_id, 'routed', routed, 'filtered', filtered,
        'processed_at', processed_at) ORDER BY processed_at), '[]'::json)
      FROM routing),
  'pending', (SELECT coalesce(json_agg(json_build_object(
        'destination', destination_id, 'job_id', id, 'attempts', attempts,
        'next_attempt_at', next_attempt_at, 'last_error', last_error) ORDER BY id), '[]'::json)
      FROM pending),
  'dead_lettered', (SELECT coalesce(json_agg(json_build_object(
        'destination', destination_id, 'job_id', id, 'attempts', attempts, 'reason', reason,
        'last_status', last_status, 'last_response', last_response, 'failed_at', failed_at) ORDER BY id), '[]'::json)
      FROM dlq_jobs WHERE message_id = $1)
)::text AS doc
"#;

impl Store {
    /// Everything stored about one messageId: dedup/ingest rows, routing decisions,
    /// pending jobs and dead-lettered jobs, as one JSON document. `source_ids`: the sources
    /// it may have come from (the dedup table is keyed by source and messageId).
    pub async fn explain(
        &self,
        message_id: &str,
        source_ids: &[&str],
    ) -> Result<serde_json::Value, StoreError> {
        let keys: Vec<uuid::Uuid> = source_ids
            .iter()
            .map(|s| super::dedup_key(s, message_id))
            .collect();
        let query = diesel::sql_query(EXPLAIN)
            .bind::<Text, _>(message_id)
            .bind::<Array<diesel::sql_types::Uuid>, _>(keys)
            .cached();
        // Index walks only: the queue tables' statistics are stale, and a sequential scan of
        // a large backlog is what this must not do.
        let rows: Vec<Doc> = self
            .load_planned("SET LOCAL enable_seqscan = off", query)
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|d| serde_json::from_str(&d.doc).ok())
            .unwrap_or(serde_json::Value::Null))
    }
}

/// Deletes delivered jobs by id, whoever holds their partition now (the destination has
/// the event).
async fn delete_delivered(
    conn: &mut diesel_async::AsyncPgConnection,
    ids: Vec<i64>,
) -> Result<(), StoreError> {
    diesel::sql_query("DELETE FROM rt_jobs WHERE id = ANY($1)")
        .bind::<Array<BigInt>, _>(ids)
        .cached()
        .execute(conn)
        .await?;
    Ok(())
}
