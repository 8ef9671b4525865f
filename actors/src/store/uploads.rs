//! Statements of the batch uploaders (warehouse kinds and the raw backup): claim the next
//! batch of a queue (`wh_jobs` of one destination, or `backup_jobs`) with its id range
//! recorded in `upload_batches` before anything is uploaded, so a retry uploads exactly
//! the same range; confirm it (delete the jobs and the record, one transaction) once the
//! sink confirmed; measure the backlog.

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Bytea, Double, Integer, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, RunQueryDsl};
use scoped_futures::ScopedFutureExt;

use super::CacheExt;
use super::{Store, StoreError};

/// Where a batch uploader's jobs wait.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JobQueue {
    /// `wh_jobs` rows of one warehouse destination.
    Warehouse(String),
    /// `backup_jobs`: stored requests waiting for the raw backup.
    Backup,
}

impl JobQueue {
    /// The queue's key in `upload_batches`.
    pub fn key(&self) -> String {
        match self {
            JobQueue::Warehouse(d) => format!("wh:{d}"),
            JobQueue::Backup => "backup".to_owned(),
        }
    }

    fn destination(&self) -> &str {
        match self {
            JobQueue::Warehouse(d) => d,
            JobQueue::Backup => "",
        }
    }
}

/// One job of a queue: the events of one stored request (for one destination).
#[derive(Debug, Clone, QueryableByName)]
pub struct QueuedJob {
    /// Row id (`wh_jobs` id, or for the backup the (lowest) `gw_jobs` id); upload order.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// Source the events came from.
    #[diesel(sql_type = Text)]
    pub source_id: String,
    /// Number of events in `payload` (or in `lines_gz`).
    #[diesel(sql_type = Integer)]
    pub event_count: i32,
    /// JSON array of normalised events, as text (empty for a backup pack).
    #[diesel(sql_type = Text)]
    pub payload: String,
    /// A backup pack: backup lines already built and gzipped by the processor (`None` for
    /// warehouse jobs and for backup rows written before packs).
    #[diesel(sql_type = Nullable<Bytea>)]
    pub lines_gz: Option<Vec<u8>>,
    /// When the row was made (`wh_jobs.created_at`), or for the backup when the gateway
    /// received the request.
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
    /// Partition of the request's events (0 for `wh_jobs`, -1 for a backup pack).
    #[diesel(sql_type = Integer)]
    pub partition: i32,
}

/// A claimed batch: the jobs of the recorded id range, in id order.
#[derive(Debug, Clone)]
pub struct ClaimedBatch {
    /// Lowest job id of the range.
    pub first_id: i64,
    /// Highest job id of the range.
    pub last_id: i64,
    /// The jobs (all of the range that still exist).
    pub jobs: Vec<QueuedJob>,
}

/// What waits in a queue.
#[derive(Debug, Clone, Copy, Default, QueryableByName)]
pub struct QueueBacklog {
    /// Rows waiting.
    #[diesel(sql_type = BigInt)]
    pub rows: i64,
    /// Events in them.
    #[diesel(sql_type = BigInt)]
    pub events: i64,
    /// Age in seconds of the oldest, if any.
    #[diesel(sql_type = Nullable<Double>)]
    pub oldest_age_secs: Option<f64>,
}

#[derive(QueryableByName)]
struct Range {
    #[diesel(sql_type = BigInt)]
    first_id: i64,
    #[diesel(sql_type = BigInt)]
    last_id: i64,
}

const WH_RANGE: &str =
    "SELECT id, source_id, event_count, payload, NULL::bytea AS lines_gz, created_at AS at, \
     0 AS partition FROM wh_jobs WHERE destination_id = $1 AND id BETWEEN $2 AND $3 ORDER BY id";
const BACKUP_RANGE: &str =
    "SELECT id, source_id, event_count, coalesce(payload, '') AS payload, lines_gz, \
     received_at AS at, partition FROM backup_jobs WHERE $1 = $1 AND id BETWEEN $2 AND $3 ORDER BY id";
// The running sum is taken over ids only; payloads are read for the chosen rows.
const WH_NEXT: &str =
    "SELECT w.id, w.source_id, w.event_count, w.payload, NULL::bytea AS lines_gz, \
     w.created_at AS at, 0 AS partition \
     FROM wh_jobs w WHERE w.id = ANY(ARRAY( \
       SELECT id FROM ( \
         SELECT id, event_count, sum(event_count) OVER (ORDER BY id) AS acc FROM ( \
           SELECT id, event_count FROM wh_jobs WHERE destination_id = $1 \
           ORDER BY id LIMIT $2) a) b \
       WHERE acc - event_count < $2)) \
     ORDER BY w.id";
const BACKUP_NEXT: &str =
    "SELECT w.id, w.source_id, w.event_count, coalesce(w.payload, '') AS payload, w.lines_gz, \
     w.received_at AS at, w.partition \
     FROM backup_jobs w WHERE $1 = $1 AND w.id = ANY(ARRAY( \
       SELECT id FROM ( \
         SELECT id, event_count, sum(event_count) OVER (ORDER BY id) AS acc FROM ( \
           SELECT id, event_count FROM backup_jobs ORDER BY id LIMIT $2) a) b \
       WHERE acc - event_count < $2)) \
     ORDER BY w.id";

impl Store {
    /// The batch to upload next from `queue`: the range recorded by an earlier attempt that
    /// was not confirmed, else the oldest jobs holding at most `max_events` events together
    /// (at least one job), whose range is recorded before this returns. `None`: nothing
    /// waits.
    pub async fn claim_batch(
        &self,
        queue: &JobQueue,
        max_events: i64,
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        let key = queue.key();
        let dest = queue.destination().to_owned();
        let (range_sql, next_sql) = match queue {
            JobQueue::Warehouse(_) => (WH_RANGE, WH_NEXT),
            JobQueue::Backup => (BACKUP_RANGE, BACKUP_NEXT),
        };
        self.timed(async {
            let mut conn = self.conn().await?;
            let recorded: Vec<Range> =
                diesel::sql_query("SELECT first_id, last_id FROM upload_batches WHERE queue = $1")
                    .bind::<Text, _>(&key)
                    .cached()
                    .load(&mut conn)
                    .await?;
            if let Some(r) = recorded.into_iter().next() {
                let jobs: Vec<QueuedJob> = diesel::sql_query(range_sql)
                    .bind::<Text, _>(&dest)
                    .bind::<BigInt, _>(r.first_id)
                    .bind::<BigInt, _>(r.last_id)
                    .cached()
                    .load(&mut conn)
                    .await?;
                if !jobs.is_empty() {
                    return Ok(Some(ClaimedBatch {
                        first_id: r.first_id,
                        last_id: r.last_id,
                        jobs,
                    }));
                }
                // The range is gone (confirmed by an earlier holder whose record stayed).
                diesel::sql_query("DELETE FROM upload_batches WHERE queue = $1")
                    .bind::<Text, _>(&key)
                    .cached()
                    .execute(&mut conn)
                    .await?;
            }
            let jobs: Vec<QueuedJob> = diesel::sql_query(next_sql)
                .bind::<Text, _>(&dest)
                .bind::<BigInt, _>(max_events.max(1))
                .cached()
                .load(&mut conn)
                .await?;
            let (Some(first), Some(last)) = (jobs[..].first(), jobs[..].last()) else {
                return Ok(None);
            };
            let (first_id, last_id) = (first.id, last.id);
            diesel::sql_query(
                "INSERT INTO upload_batches (queue, first_id, last_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (queue) DO UPDATE SET first_id = excluded.first_id, \
                 last_id = excluded.last_id, created_at = now()",
            )
            .bind::<Text, _>(&key)
            .bind::<BigInt, _>(first_id)
            .bind::<BigInt, _>(last_id)
            .cached()
            .execute(&mut conn)
            .await?;
            Ok(Some(ClaimedBatch {
                first_id,
                last_id,
                jobs,
            }))
        })
        .await
    }

    /// The sink confirmed the batch whose jobs are `ids`: deletes those jobs and the
    /// batch's record, in one transaction. By id, not by range: `backup_jobs` rows of
    /// different processor commits (or nodes) are not inserted in id order, so a row with a
    /// lower id may arrive while a batch is being uploaded, and it must wait for the next.
    pub async fn confirm_batch(&self, queue: &JobQueue, ids: &[i64]) -> Result<(), StoreError> {
        let key = queue.key();
        let dest = queue.destination().to_owned();
        let delete = match queue {
            JobQueue::Warehouse(_) => {
                "DELETE FROM wh_jobs WHERE destination_id = $1 AND id = ANY($2)"
            }
            JobQueue::Backup => "DELETE FROM backup_jobs WHERE $1 = $1 AND id = ANY($2)",
        };
        self.timed(async {
            let mut conn = self.conn().await?;
            conn.transaction::<_, StoreError, _>(|conn| {
                async move {
                    diesel::sql_query(delete)
                        .bind::<Text, _>(&dest)
                        .bind::<diesel::sql_types::Array<BigInt>, _>(ids)
                        .cached()
                        .execute(conn)
                        .await?;
                    diesel::sql_query("DELETE FROM upload_batches WHERE queue = $1")
                        .bind::<Text, _>(&key)
                        .cached()
                        .execute(conn)
                        .await?;
                    Ok(())
                }
                .scope_boxed()
            })
            .await
        })
        .await
    }

    /// Rows and events waiting in `queue`, and the age of the oldest.
    pub async fn queue_backlog(&self, queue: &JobQueue) -> Result<QueueBacklog, StoreError> {
        let dest = queue.destination().to_owned();
        let sql = match queue {
            JobQueue::Warehouse(_) => {
                "SELECT count(*)::int8 AS rows, coalesce(sum(event_count), 0)::int8 AS events, \
                   (SELECT extract(epoch FROM now() - created_at)::float8 FROM wh_jobs \
                    WHERE destination_id = $1 ORDER BY id LIMIT 1) AS oldest_age_secs \
                 FROM wh_jobs WHERE destination_id = $1"
            }
            JobQueue::Backup => {
                "SELECT count(*)::int8 AS rows, coalesce(sum(event_count), 0)::int8 AS events, \
                   (SELECT extract(epoch FROM now() - received_at)::float8 FROM backup_jobs \
                    ORDER BY id LIMIT 1) AS oldest_age_secs \
                 FROM backup_jobs WHERE $1 = $1"
            }
        };
        self.timed(async {
            let mut conn = self.conn().await?;
            let rows: Vec<QueueBacklog> = diesel::sql_query(sql)
                .bind::<Text, _>(&dest)
                .cached()
                .load(&mut conn)
                .await?;
            Ok(rows.into_iter().next().unwrap_or_default())
        })
        .await
    }
}
