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

/// An `rt_jobs` row as a router loads it: a bundle of jobs of one destination and
/// partition, in delivery order. The i-th job is (`ordering_keys[i]`, `message_ids[i]`,
/// `payloads[i]`); `state` says which are done and which wait for a retry.
#[derive(Debug, Clone, QueryableByName)]
pub struct RtBundle {
    /// Row id (delivery order within a key, across rows).
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// Per job: userId, else anonymousId.
    #[diesel(sql_type = Array<Text>)]
    pub ordering_keys: Vec<String>,
    /// Per job: the event's messageId.
    #[diesel(sql_type = Array<Text>)]
    pub message_ids: Vec<String>,
    /// Per job: the destination-ready payload as JSON text.
    #[diesel(sql_type = Array<Text>)]
    pub payloads: Vec<String>,
    /// The row's `state` as JSON text (see [`JobState`]), if any job has one.
    #[diesel(sql_type = Nullable<Text>)]
    pub state: Option<String>,
}

/// What `rt_jobs.state` records of one job of a row that still waits.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum JobState {
    /// Delivered or dead-lettered (stored as `1`).
    Done(u8),
    /// Failed, waiting to be retried.
    Retry {
        /// Attempts made so far.
        #[serde(rename = "a")]
        attempts: i32,
        /// Not before this time (epoch ms).
        #[serde(rename = "n")]
        next_attempt_ms: i64,
        /// When the first attempt failed (epoch ms).
        #[serde(rename = "f", default)]
        first_failed_ms: Option<i64>,
    },
}

impl RtBundle {
    /// The state of each job that has one, by 0-based index (empty when the row has none or
    /// it cannot be read, which retries those jobs afresh).
    pub fn job_states(&self) -> std::collections::HashMap<usize, JobState> {
        let Some(text) = self.state.as_deref() else {
            return Default::default();
        };
        let parsed: std::collections::HashMap<String, JobState> =
            serde_json::from_str(text).unwrap_or_default();
        parsed
            .into_iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
            .collect()
    }
}

/// One job's place: its `rt_jobs` row and its 0-based index in the row's arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobRef {
    /// Row id.
    pub row: i64,
    /// Index in the row.
    pub index: i32,
}

/// A failed attempt to record: the job stays, to be retried.
#[derive(Debug, Clone)]
pub struct RetryUpdate {
    /// The job.
    pub job: JobRef,
    /// Attempts made, this one included.
    pub attempts: i32,
    /// Not before this time.
    pub next_attempt_at: DateTime<Utc>,
    /// When its first attempt failed.
    pub first_failed_at: DateTime<Utc>,
    /// What went wrong.
    pub error: String,
}

/// A job to copy to the DLQ.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The job.
    pub job: JobRef,
    /// Attempts made.
    pub attempts: i32,
    /// Why.
    pub reason: String,
    /// Last HTTP status.
    pub last_status: Option<i32>,
    /// First 1 KB of the last response.
    pub last_response: Option<String>,
}

/// Delivery outcomes to record together, per row (a router builds it from its jobs'
/// outcomes and what it knows of each row's other jobs).
#[derive(Debug, Default)]
pub struct StatusBatch {
    /// Rows all of whose jobs were delivered: delete, whoever holds the partition now (the
    /// destination has the events).
    pub delivered: Vec<i64>,
    /// Rows all of whose jobs are done, some dead-lettered here: delete while this node
    /// holds the partition (with the dead letters).
    pub finished: Vec<i64>,
    /// Rows still waiting: the entries to merge into `state` (see [`JobState`]), while
    /// this node holds the partition.
    pub marks: Vec<(i64, serde_json::Map<String, serde_json::Value>)>,
    /// Jobs to copy to `dlq_jobs`, before their rows are marked or deleted.
    pub dead: Vec<DeadLetter>,
}

impl StatusBatch {
    /// Nothing to record.
    pub fn is_empty(&self) -> bool {
        self.delivered.is_empty()
            && self.finished.is_empty()
            && self.marks.is_empty()
            && self.dead.is_empty()
    }

    /// Puts an unwritten batch back in front of what accumulated since.
    pub fn merge_front(&mut self, mut older: StatusBatch) {
        older.delivered.append(&mut self.delivered);
        older.finished.append(&mut self.finished);
        older.marks.append(&mut self.marks);
        older.dead.append(&mut self.dead);
        *self = older;
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
    /// The rows of `destination` in `partitions` with id > `after`, in id order, holding
    /// about `budget` jobs: rows are taken while fewer jobs than that came before them (so
    /// at least one). (Every writer of `rt_jobs` takes the order lock, so ids commit in
    /// increasing order and nothing below `after` can appear later.)
    pub async fn load_rt_bundles(
        &self,
        destination: &str,
        partitions: &[i32],
        after: i64,
        budget: i64,
    ) -> Result<Vec<RtBundle>, StoreError> {
        // Walk the (destination_id, id) index in order. A queue table's statistics are
        // always stale ("id > after" looks nearly empty), and the planner then prefers a
        // bitmap scan plus a sort of the whole window, which spills to disk: many times
        // slower. Rows past the budget are dropped before their payloads are read.
        let query = diesel::sql_query(
            "SELECT id, ordering_keys, message_ids, payloads, state::text AS state FROM ( \
               SELECT id, ordering_keys, message_ids, payloads, state, \
                      sum(cardinality(message_ids)) OVER (ORDER BY id) - cardinality(message_ids) AS before \
               FROM rt_jobs WHERE destination_id = $1 AND id > $2 AND partition = ANY($4) \
               ORDER BY id LIMIT $3) b \
             WHERE before < $3 ORDER BY id",
        )
        .bind::<Text, _>(destination)
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(budget.max(1))
        .bind::<Array<Integer>, _>(partitions)
        .cached();
        self.load_planned(
            "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off",
            query,
        )
        .await
    }

    /// Records a batch of outcomes in one transaction (the batch is kept for a retry).
    /// Deliveries are recorded whoever holds the rows' partition now (the destination has
    /// the events); retries, dead letters and marks only while this node still holds it.
    pub async fn apply_status_ref(&self, batch: &StatusBatch) -> Result<(), StoreError> {
        let delivered = batch.delivered.clone();
        if batch.finished.is_empty() && batch.marks.is_empty() && batch.dead.is_empty() {
            // The common case, whole rows delivered: one statement is atomic by itself,
            // which saves the BEGIN and COMMIT round trips of a transaction.
            return self
                .timed(async {
                    let mut conn = self.conn().await?;
                    delete_rows(&mut conn, delivered, None).await
                })
                .await;
        }
        let node = self.node.clone();
        let (mark_ids, marks) = merge_marks(&batch.marks);
        // A row whose dead job is copied in this write goes only with the copy, under the
        // lease (a failed write merged with a later one can name it as delivered).
        let dead_rows: std::collections::HashSet<i64> =
            batch.dead.iter().map(|d| d.job.row).collect();
        let (mut finished, delivered): (Vec<i64>, Vec<i64>) = delivered
            .into_iter()
            .partition(|row| dead_rows.contains(row));
        finished.extend_from_slice(&batch.finished);
        let dead = batch.dead.clone();
        self.timed(async {
            let mut conn = self.conn().await?;
            conn.transaction::<_, StoreError, _>(|conn| {
                async move {
                    if !dead.is_empty() {
                        copy_dead_letters(conn, dead, &node).await?;
                    }
                    if !mark_ids.is_empty() {
                        diesel::sql_query(
                            "UPDATE rt_jobs SET state = coalesce(state, '{}'::jsonb) || u.p::jsonb \
                             FROM unnest($1::int8[], $2::text[]) AS u(id, p) \
                             WHERE rt_jobs.id = u.id \
                             AND rt_jobs.partition IN (SELECT partition FROM leases WHERE owner = $3)",
                        )
                        .bind::<Array<BigInt>, _>(mark_ids)
                        .bind::<Array<Text>, _>(marks)
                        .bind::<Text, _>(&*node)
                        .cached()
                        .execute(conn)
                        .await?;
                    }
                    if !finished.is_empty() {
                        delete_rows(conn, finished, Some(&node)).await?;
                    }
                    if !delivered.is_empty() {
                        delete_rows(conn, delivered, None).await?;
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

    /// Moves dead-lettered jobs back to `rt_jobs` as new jobs (fresh attempts, a row each), keeping
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
                           INSERT INTO rt_jobs (destination_id, ordering_keys, message_ids, source_ids, payloads, partition) \
                           SELECT destination_id, ARRAY[ordering_key], ARRAY[message_id], ARRAY[source_id], ARRAY[payload::text], partition \
                           FROM moved ORDER BY id \
                           RETURNING id, destination_id, message_ids[1] AS message_id, source_ids[1] AS source_id), \
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
/// request its dedup row names — the row's one decision, or the event's entry by its position
/// among the row's messageIds — (or, for dead-letter replays, in `routing_log`); its pending
/// jobs are found per destination it was routed to, in the `rt_jobs` rows of the id range
/// that routing row's commit wrote (a pending job's `job_id` is its row's id, shared with
/// the other jobs of the row). Jobs no retained routing row covers — older than the retention
/// window (a long backlog, an open circuit) or written before migration 000007 — all have
/// ids below the range of the oldest retained `routing_jobs` row, so they are searched in
/// that stretch of the primary key, usually empty.
const EXPLAIN: &str = r#"
WITH stored AS (
  SELECT k.source_id, d.job_id, d.seen_at
  FROM unnest($2::uuid[], $3::text[]) AS k(key, source_id) JOIN dedup d ON d.key = k.key
), routing AS (
  SELECT r.source_id, r.job_id,
         CASE WHEN r.message_ids IS NULL THEN r.routed ELSE r.routed -> (e.i - 1)::int END
           AS routed,
         CASE WHEN r.message_ids IS NULL THEN r.filtered ELSE r.filtered -> (e.i - 1)::int END
           AS filtered,
         r.processed_at, r.rt_first, r.rt_last
  FROM stored s
  CROSS JOIN LATERAL (SELECT * FROM routing_jobs rj WHERE rj.job_id = s.job_id) r
  -- A request routed alike throughout (no messageIds) holds one decision for all events.
  CROSS JOIN LATERAL (
      SELECT e.i FROM unnest(r.message_ids) WITH ORDINALITY AS e(mid, i) WHERE e.mid = $1
      UNION ALL
      SELECT NULL WHERE r.message_ids IS NULL) e
  UNION ALL
  SELECT source_id, job_id, coalesce(routed_to, to_jsonb(routed)), filtered, processed_at,
         rt_first, rt_last
  FROM routing_log WHERE message_id = $1
), candidates AS (
  SELECT rj.id
  FROM routing r
  CROSS JOIN LATERAL jsonb_array_elements_text(
      CASE WHEN jsonb_typeof(r.routed) = 'array' THEN r.routed ELSE '[]' END) AS t(dest)
  CROSS JOIN LATERAL (
      SELECT id FROM rt_jobs
      WHERE destination_id = t.dest AND id BETWEEN r.rt_first AND r.rt_last
        AND $1 = ANY(message_ids)) rj
  WHERE r.rt_first IS NOT NULL
  UNION
  SELECT id FROM rt_jobs
  WHERE id < coalesce((SELECT rt_first FROM routing_jobs WHERE rt_first IS NOT NULL
                       ORDER BY job_id LIMIT 1), 9223372036854775807)
    AND $1 = ANY(message_ids)
), pending AS (
  SELECT rj.id, rj.destination_id, coalesce((s.v ->> 'a')::int, 0) AS attempts,
         coalesce(to_timestamp((s.v ->> 'n')::float8 / 1000), rj.created_at) AS next_attempt_at,
         s.v ->> 'e' AS last_error
  FROM candidates c
  JOIN rt_jobs rj ON rj.id = c.id
  CROSS JOIN LATERAL unnest(rj.message_ids) WITH ORDINALITY AS m(mid, i)
  CROSS JOIN LATERAL (SELECT rj.state -> (m.i - 1)::text AS v) s
  WHERE m.mid = $1 AND coalesce(s.v, 'null'::jsonb) <> '1'::jsonb
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
    /// it may have come from (the dedup table is keyed by a hash of source and messageId, and
    /// a dedup row names its source only through that key).
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
            .bind::<Array<Text>, _>(source_ids)
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

/// Deletes whole rows by id: whoever holds their partition now (`lease_owner` `None`, the
/// rows were delivered), or only while `lease_owner` holds it.
async fn delete_rows(
    conn: &mut diesel_async::AsyncPgConnection,
    ids: Vec<i64>,
    lease_owner: Option<&str>,
) -> Result<(), StoreError> {
    diesel::sql_query(
        "DELETE FROM rt_jobs WHERE id = ANY($1) AND ($2::text IS NULL \
         OR partition IN (SELECT partition FROM leases WHERE owner = $2))",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Nullable<Text>, _>(lease_owner)
    .cached()
    .execute(conn)
    .await?;
    Ok(())
}

/// Copies dead jobs to `dlq_jobs` (new ids from `rt_jobs`' sequence, in the order given),
/// while `node` holds their partition and unless their row is gone or marks them done (a
/// batch written before).
async fn copy_dead_letters(
    conn: &mut diesel_async::AsyncPgConnection,
    dead: Vec<DeadLetter>,
    node: &str,
) -> Result<(), StoreError> {
    let n = dead.len();
    let (mut rows, mut idx, mut att) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut reason, mut status, mut resp) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for d in dead {
        rows.push(d.job.row);
        idx.push(d.job.index);
        att.push(d.attempts);
        reason.push(super::text_without_nul(d.reason));
        status.push(d.last_status);
        resp.push(d.last_response.map(super::text_without_nul));
    }
    diesel::sql_query(
        "INSERT INTO dlq_jobs (id, destination_id, ordering_key, message_id, source_id, payload, attempts, \
                               reason, last_status, last_response, created_at, partition) \
         SELECT nextval('rt_jobs_id_seq'), r.destination_id, r.ordering_keys[u.i + 1], r.message_ids[u.i + 1], \
                r.source_ids[u.i + 1], r.payloads[u.i + 1]::json, u.a, u.r, u.s, u.b, r.created_at, r.partition \
         FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::text[], $5::int4[], $6::text[]) \
              WITH ORDINALITY AS u(row_id, i, a, r, s, b, o) \
         JOIN rt_jobs r ON r.id = u.row_id \
         WHERE r.partition IN (SELECT partition FROM leases WHERE owner = $7) \
           AND coalesce(r.state -> (u.i::text), 'null'::jsonb) <> '1'::jsonb \
         ORDER BY u.o",
    )
    .bind::<Array<BigInt>, _>(rows)
    .bind::<Array<Integer>, _>(idx)
    .bind::<Array<Integer>, _>(att)
    .bind::<Array<Text>, _>(reason)
    .bind::<Array<Nullable<Integer>>, _>(status)
    .bind::<Array<Nullable<Text>>, _>(resp)
    .bind::<Text, _>(node)
    .cached()
    .execute(conn)
    .await?;
    Ok(())
}

/// One merged state patch per row (a later mark of a job overrides an earlier one), as
/// parallel arrays of row ids and JSON objects.
fn merge_marks(
    marks: &[(i64, serde_json::Map<String, serde_json::Value>)],
) -> (Vec<i64>, Vec<String>) {
    let mut merged: std::collections::BTreeMap<i64, serde_json::Map<String, serde_json::Value>> =
        std::collections::BTreeMap::new();
    for (row, patch) in marks {
        let into = merged.entry(*row).or_default();
        into.extend(patch.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    merged
        .into_iter()
        .map(|(row, m)| {
            (
                row,
                super::without_nul(serde_json::Value::Object(m)).to_string(),
            )
        })
        .unzip()
}
