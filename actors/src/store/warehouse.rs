//! Warehouse statements on Keel's own database: read a destination's `wh_jobs` in id order
//! in batches bounded by event count, delete them once loaded, measure the backlog, and
//! read this database's instance id (which keys the checkpoints kept in warehouses).

use super::CacheExt;
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

use super::{Store, StoreError};

/// One `wh_jobs` row: the events of one request for one warehouse destination.
#[derive(Debug, Clone, QueryableByName)]
pub struct WhJob {
    /// Row id (load order).
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// Source the events came from (selects the warehouse schema).
    #[diesel(sql_type = Text)]
    pub source_id: String,
    /// Number of events in `payload`.
    #[diesel(sql_type = Integer)]
    pub event_count: i32,
    /// JSON array of normalised events, as text.
    #[diesel(sql_type = Text)]
    pub payload: String,
}

/// One `wh_jobs` row to insert (processor side).
#[derive(Debug, Clone)]
pub struct WhJobInsert {
    /// Warehouse destination id.
    pub destination_id: String,
    /// Source id.
    pub source_id: String,
    /// Number of events in `payload`.
    pub event_count: i32,
    /// JSON array of the events, as text.
    pub payload: String,
}

/// What is waiting for one warehouse destination.
#[derive(Debug, Clone, Copy, Default, QueryableByName)]
pub struct WhBacklog {
    /// Events waiting.
    #[diesel(sql_type = BigInt)]
    pub events: i64,
    /// Age in seconds of the oldest waiting row, if any.
    #[diesel(sql_type = Nullable<Double>)]
    pub oldest_age_secs: Option<f64>,
}

#[derive(QueryableByName)]
struct InstanceRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: uuid::Uuid,
}

impl Store {
    /// The oldest jobs of `destination` holding at most `max_events` events together (at
    /// least one job, however large), in id order.
    pub async fn fetch_wh_jobs(
        &self,
        destination: &str,
        max_events: i64,
    ) -> Result<Vec<WhJob>, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            // The running sum is taken over ids only; payloads are read for the chosen rows.
            Ok(diesel::sql_query(
                "SELECT w.id, w.source_id, w.event_count, w.payload FROM wh_jobs w \
                 WHERE w.id = ANY(ARRAY( \
                   SELECT id FROM ( \
                     SELECT id, event_count, sum(event_count) OVER (ORDER BY id) AS acc FROM ( \
                       SELECT id, event_count FROM wh_jobs WHERE destination_id = $1 \
                       ORDER BY id LIMIT $2) a) b \
                   WHERE acc - event_count < $2)) \
                 ORDER BY w.id",
            )
            .bind::<Text, _>(destination)
            .bind::<BigInt, _>(max_events.max(1))
            .cached()
            .load(&mut conn)
            .await?)
        })
        .await
    }

    /// Deletes `destination`'s jobs up to `last_id` (they are loaded).
    pub async fn delete_wh_jobs(
        &self,
        destination: &str,
        last_id: i64,
    ) -> Result<usize, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            Ok(
                diesel::sql_query("DELETE FROM wh_jobs WHERE destination_id = $1 AND id <= $2")
                    .bind::<Text, _>(destination)
                    .bind::<BigInt, _>(last_id)
                    .cached()
                    .execute(&mut conn)
                    .await?,
            )
        })
        .await
    }

    /// Events waiting for `destination` and the age of the oldest.
    pub async fn wh_backlog(&self, destination: &str) -> Result<WhBacklog, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let rows: Vec<WhBacklog> = diesel::sql_query(
                "SELECT (SELECT coalesce(sum(event_count), 0)::int8 FROM wh_jobs \
                         WHERE destination_id = $1) AS events, \
                        (SELECT extract(epoch FROM now() - created_at)::float8 FROM wh_jobs \
                         WHERE destination_id = $1 ORDER BY id LIMIT 1) AS oldest_age_secs",
            )
            .bind::<Text, _>(destination)
            .cached()
            .load(&mut conn)
            .await?;
            Ok(rows.into_iter().next().unwrap_or_default())
        })
        .await
    }

    /// This database's instance id (made by the migration, stable for its lifetime).
    pub async fn instance_id(&self) -> Result<uuid::Uuid, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let rows: Vec<InstanceRow> = diesel::sql_query("SELECT id FROM keel_instance")
                .cached()
                .load(&mut conn)
                .await?;
            rows.into_iter()
                .next()
                .map(|r| r.id)
                .ok_or_else(|| StoreError::Migration("keel_instance has no row".into()))
        })
        .await
    }
}
