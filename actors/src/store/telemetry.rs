//! Backlog statements for the telemetry sampler: how old the oldest request the processor
//! has not consumed is, and per destination how many jobs wait, how old the oldest one is
//! and how many are dead-lettered. Every probe walks an index (`gw_jobs` primary key,
//! `rt_jobs (destination_id, id)`, `dlq_jobs (destination_id, id)`); none scans a table.
//! Also the pool's own counters, which need no SQL. Read-only: nothing here writes.

use super::CacheExt;
use diesel::sql_types::{Array, BigInt, Double, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

use super::processor::PROCESSOR_STAGE;
use super::{Store, StoreError};

/// Backlog of one destination.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct DestinationBacklog {
    /// Destination id.
    #[diesel(sql_type = Text)]
    pub destination_id: String,
    /// Jobs waiting in `rt_jobs` (due or waiting for a retry; a row's done jobs not counted).
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    /// Age in seconds of the oldest waiting job (0 when none waits).
    #[diesel(sql_type = Double)]
    pub oldest_pending_seconds: f64,
    /// `dlq_jobs` rows.
    #[diesel(sql_type = BigInt)]
    pub dead_lettered: i64,
}

#[derive(QueryableByName)]
struct Lag {
    #[diesel(sql_type = Double)]
    seconds: f64,
}

/// Connection pool usage at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Largest number of connections the pool may open.
    pub max: usize,
    /// Connections open now (in use or idle).
    pub open: usize,
    /// Open connections idle in the pool.
    pub idle: usize,
    /// Tasks waiting for a connection.
    pub waiting: usize,
}

impl Store {
    /// Age in seconds of the oldest `gw_jobs` row after the processor's checkpoint (0 when
    /// the processor has consumed everything). One primary-key probe.
    pub async fn processor_lag_seconds(&self) -> Result<f64, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let lag: Lag = diesel::sql_query(
                "SELECT coalesce(( \
                   SELECT extract(epoch FROM now() - received_at)::float8 FROM gw_jobs \
                   WHERE id > coalesce((SELECT position FROM checkpoints \
                                        WHERE stage = $1 AND partition = 0), 0) \
                   ORDER BY id LIMIT 1), 0)::float8 AS seconds",
            )
            .bind::<Text, _>(PROCESSOR_STAGE)
            .cached()
            .get_result(&mut conn)
            .await?;
            Ok(lag.seconds.max(0.0))
        })
        .await
    }

    /// Backlog of each destination in `destinations` (one row each, in the same order), in
    /// one statement. Counting walks the `(destination_id, id)` indexes, so its cost grows
    /// with the backlog, not with the table.
    pub async fn destination_backlog(
        &self,
        destinations: &[String],
    ) -> Result<Vec<DestinationBacklog>, StoreError> {
        if destinations.is_empty() {
            return Ok(Vec::new());
        }
        self.load_all(
diesel::sql_query(
                "SELECT d.destination_id, \
                   (SELECT coalesce(sum(cardinality(r.message_ids) - (SELECT count(*) FROM jsonb_each(r.state) e \
                                        WHERE e.value = '1'::jsonb)), 0)::int8 \
                    FROM rt_jobs r WHERE r.destination_id = d.destination_id) AS pending, \
                   coalesce((SELECT extract(epoch FROM now() - r.created_at)::float8 FROM rt_jobs r \
                             WHERE r.destination_id = d.destination_id ORDER BY r.id LIMIT 1), 0)::float8 \
                     AS oldest_pending_seconds, \
                   (SELECT count(*) FROM dlq_jobs q WHERE q.destination_id = d.destination_id) AS dead_lettered \
                 FROM unnest($1::text[]) WITH ORDINALITY AS d(destination_id, n) ORDER BY d.n",
            )
            .bind::<Array<Text>, _>(destinations)
            .cached(),
)
        .await
    }

    /// The pool's counters now (no SQL, no waiting).
    pub fn pool_usage(&self) -> PoolUsage {
        let s = self.pool.status();
        PoolUsage {
            max: s.max_size,
            open: s.size,
            idle: s.available,
            waiting: s.waiting,
        }
    }
}
