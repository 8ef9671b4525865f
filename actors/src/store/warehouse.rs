//! Warehouse statements on Keel's own database that are not the uploaders' queue handling
//! (see `uploads.rs`): the row the processor inserts into `wh_jobs`, and this database's
//! instance id (which keys the checkpoints kept in warehouses).

use super::CacheExt;
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

use super::{Store, StoreError};

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

#[derive(QueryableByName)]
struct InstanceRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: uuid::Uuid,
}

impl Store {
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
