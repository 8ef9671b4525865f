//! What a batch-loaded destination kind and the uploader agree on: the [`WarehouseKind`] a
//! kind answers (its batching [`UploadSpec`] and a factory for its [`Sink`]), the
//! [`JobBatch`] a sink is handed, what a load reports ([`LoadStats`]) and how it fails
//! ([`SinkError`]). Depends on nothing of the uploader actor or of the destination kinds,
//! so both can depend on it.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::store::{JobQueue, QueuedJob};

/// Uploader tuning shared by every warehouse destination.
#[derive(Debug, Clone)]
pub struct UploaderConfig {
    /// First retry delay after a failed load.
    pub retry_base: Duration,
    /// Largest retry delay.
    pub retry_max_backoff: Duration,
    /// Columns a warehouse table may get at most; values for more are discarded.
    pub max_columns: usize,
    /// How often the backlog gauges are refreshed.
    pub backlog_interval: Duration,
}

impl Default for UploaderConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(1),
            retry_max_backoff: Duration::from_secs(60),
            max_columns: 1000,
            backlog_interval: Duration::from_secs(5),
        }
    }
}

/// One claimed batch, as a sink sees it.
pub struct JobBatch {
    /// Keel database instance id (keys checkpoints kept in a warehouse).
    pub instance: uuid::Uuid,
    /// Destination id (`backup` for the raw backup).
    pub destination: String,
    /// Lowest job id of the batch's range.
    pub first_id: i64,
    /// Highest job id of the batch's range.
    pub last_id: i64,
    /// The jobs, in id order.
    pub jobs: Vec<QueuedJob>,
}

/// Why a sink could not take a batch; the batch stays queued and is retried.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The Postgres warehouse failed.
    #[error(transparent)]
    Postgres(#[from] LoadError),
    /// The object store failed or refused.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// ClickHouse failed or refused.
    #[error("clickhouse: {0}")]
    ClickHouse(String),
    /// The batch could not be encoded (Parquet, JSON).
    #[error("encoding: {0}")]
    Encode(String),
}

/// Where an uploader's batches go. A sink must make a batch durable before `load`
/// returns `Ok`, and loading the same batch (same id range) again must not duplicate it.
pub trait Sink: Send {
    /// Uploads or loads one batch.
    fn load<'a>(&'a mut self, batch: &'a JobBatch) -> BoxFuture<'a, Result<LoadStats, SinkError>>;
    /// Forgets connections and cached state after a failure.
    fn reset(&mut self) {}
}

/// What a batch-uploading destination kind tells the supervisor: how to batch, and how to
/// make its sink.
pub trait WarehouseKind: Send + Sync {
    /// Destination id, queue, interval and batch size.
    fn spec(&self) -> UploadSpec;
    /// A fresh sink; `sources` maps the ids of the sources feeding the destination to their
    /// names (default schema / namespace names derive from them).
    fn sink(&self, sources: &HashMap<String, String>, config: &UploaderConfig) -> Box<dyn Sink>;
}

/// Which metric family an uploader reports to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMetrics {
    /// `keel_warehouse_*`, labelled `destination`.
    Warehouse,
    /// `keel_backup_*`.
    Backup,
}

/// How one uploader batches.
#[derive(Debug, Clone)]
pub struct UploadSpec {
    /// Destination id (`backup` for the raw backup).
    pub id: String,
    /// Where its jobs wait.
    pub queue: JobQueue,
    /// How often what waits is uploaded.
    pub upload_interval: Duration,
    /// Events per batch at most (a single larger job is a batch of its own).
    pub max_batch_rows: i64,
    /// Metric family.
    pub metrics: UploadMetrics,
}

impl UploadSpec {
    /// The spec of warehouse destination `id`: its `wh_jobs`, its batching, the
    /// `keel_warehouse_*` metrics.
    pub fn warehouse(id: &str, upload_interval: Duration, max_batch_rows: i64) -> Self {
        Self {
            id: id.to_owned(),
            queue: JobQueue::Warehouse(id.to_owned()),
            upload_interval,
            max_batch_rows,
            metrics: UploadMetrics::Warehouse,
        }
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadStats {
    /// Rows written (inserted or upserted).
    pub rows: u64,
    /// Rows skipped because their table's checkpoint already covered them.
    pub skipped: u64,
    /// Values sent to `keel_discards`.
    pub discards: u64,
    /// Columns added.
    pub columns_added: u64,
    /// Objects written (object-store sinks).
    pub objects: u64,
    /// Bytes written (object-store sinks).
    pub bytes: u64,
}

/// Why a load failed; the batch stays in `wh_jobs` and is retried.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Could not connect.
    #[error("cannot connect to the warehouse: {0}")]
    Connect(String),
    /// A statement failed.
    #[error("warehouse statement failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// Keel's own database failed (claiming or confirming a batch).
    #[error("keel database: {0}")]
    Keel(String),
}
