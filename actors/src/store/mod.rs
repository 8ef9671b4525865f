//! `Store`: the one owner of Keel's Postgres pool and of every SQL statement Keel runs
//! (module per stage: `gateway`, `processor`, `router`, `warehouse`). Callers get typed methods, never a
//! connection; nothing outside this module writes SQL.

mod cached;
mod cluster;
mod gateway;
mod migrate;
mod processor;
mod router;
mod telemetry;
mod uploads;
mod warehouse;

use std::time::Duration;

use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// NUL-free texts for the columns that quote destinations and scripts (one home, shared with
/// the warehouse's cells).
pub(crate) use crate::warehouse::schema::{text_without_nul, without_nul};
use cached::CacheExt;
pub use cluster::{HeldLease, LeaseRow, NodeRow, Tenure};
pub use gateway::{GwJobInsert, ReplayInsert};
pub use migrate::{run_migrations, MIGRATIONS};
pub use processor::{
    BackupPack, Consumed, DlqInsert, GwJob, ProcessedBatch, RoutingRecord, RtJobInsert,
    PROCESSOR_STAGE,
};
pub use router::{
    DeadLetter, DlqJob, JobRef, JobState, RetryUpdate, RtBundle, StatusBatch, TransformDeadLetter,
};
pub use telemetry::{DestinationBacklog, PoolUsage};
pub use uploads::{ClaimedBatch, JobQueue, QueueBacklog, QueuedJob};
pub use warehouse::WhJobInsert;

/// The dedup-table key of a (source, messageId): a 128-bit xxh3 hash of both, as a UUID.
pub fn dedup_key(source_id: &str, message_id: &str) -> uuid::Uuid {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(source_id.as_bytes());
    h.update(&[0]);
    h.update(message_id.as_bytes());
    uuid::Uuid::from_u128(h.digest128())
}

/// Errors from the store: the database could not be reached or a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had from the pool (Postgres down, pool exhausted).
    #[error("cannot get a database connection: {0}")]
    Pool(String),
    /// A statement failed.
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// Connecting for migrations failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// This node no longer holds the partitions it worked on (another node took over, or
    /// the rows were consumed elsewhere): the transaction was rolled back.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A statement did not finish in time.
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        StoreError::Pool(e.to_string())
    }
}

/// Pool settings for [`Store::connect`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Maximum open connections.
    pub max_size: usize,
    /// How long to wait for a connection (creating one included).
    pub timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 16,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Handle on Keel's Postgres database; cheap to clone (shares the pool).
#[derive(Clone)]
pub struct Store {
    pool: Pool<AsyncPgConnection>,
    timeout: Duration,
    /// This node's id: the owner name its leases carry and its fences check.
    node: std::sync::Arc<str>,
}

impl Store {
    /// Builds a pool for `url`. Connections are opened lazily, so this succeeds even when
    /// Postgres is down; use [`Store::ping`] to check reachability.
    pub fn connect(url: &str, settings: &PoolConfig) -> Result<Self, StoreError> {
        // Fast recycling: a broken connection surfaces as a statement error (answered 503
        // and retried); verifying every checkout cost a round trip per group commit.
        let mut manager_config = ManagerConfig::default();
        manager_config.recycling_method = RecyclingMethod::Fast;
        // A client that stops mid-transaction (its network hangs) must not hold its locks —
        // lease rows, the order lock — until TCP notices: Postgres ends such a session after
        // twice the statement timeout, as Keel's own side gives up after it. Parallel query
        // is off for Keel's sessions: every statement is an indexed queue operation, and
        // worker processes only add start-up cost and take the cores the pipeline needs.
        let idle_ms = (settings.timeout * 2).as_millis().max(1000);
        manager_config.custom_setup = Box::new(move |url| {
            let url = url.to_owned();
            Box::pin(async move {
                use diesel_async::{AsyncConnection, SimpleAsyncConnection};
                let mut conn = AsyncPgConnection::establish(&url).await?;
                conn.batch_execute(&format!(
                    "SET idle_in_transaction_session_timeout = {idle_ms}; \
                     SET max_parallel_workers_per_gather = 0"
                ))
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(conn)
            })
        });
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
        let pool = Pool::builder(manager)
            .max_size(settings.max_size)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        Ok(Self {
            pool,
            timeout: settings.timeout,
            node: std::sync::Arc::from("local"),
        })
    }

    /// The same store acting for node `node` (lease owner name and fence identity).
    pub fn for_node(mut self, node: &str) -> Self {
        self.node = std::sync::Arc::from(node);
        self
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub(crate) async fn conn(&self) -> Result<Object<AsyncPgConnection>, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Runs `fut` with the store's statement timeout.
    pub(crate) async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout * 2, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.timeout * 2)),
        }
    }

    /// Loads `query`'s rows on a pooled connection within the statement timeout: the
    /// `timed → conn → load` steps every one-statement read shares.
    pub(crate) async fn load_all<'q, Q, T>(&self, query: Q) -> Result<Vec<T>, StoreError>
    where
        Q: diesel_async::methods::LoadQuery<'q, AsyncPgConnection, T> + Send + 'q,
        T: Send + 'q,
    {
        self.timed(async {
            let mut conn = self.conn().await?;
            Ok(query.load(&mut conn).await?)
        })
        .await
    }

    /// Runs `query` on a pooled connection within the statement timeout; answers the rows
    /// it changed.
    pub(crate) async fn execute<'q, Q>(&self, query: Q) -> Result<usize, StoreError>
    where
        Q: diesel_async::methods::ExecuteDsl<AsyncPgConnection> + Send + 'q,
    {
        self.timed(async {
            let mut conn = self.conn().await?;
            Ok(query.execute(&mut conn).await?)
        })
        .await
    }

    /// Loads `query`'s rows in a transaction of its own that first runs `planner` (`SET
    /// LOCAL` planner settings, so they bind this one statement). Queue tables' statistics
    /// are always stale; the statements that must walk an index say so this way.
    pub(crate) async fn load_planned<'q, Q, T>(
        &self,
        planner: &'static str,
        query: Q,
    ) -> Result<Vec<T>, StoreError>
    where
        Q: diesel_async::methods::LoadQuery<'q, AsyncPgConnection, T> + Send + 'q,
        T: Send + 'q,
    {
        use diesel_async::{AsyncConnection, SimpleAsyncConnection};
        use scoped_futures::ScopedFutureExt;
        self.timed(async {
            let mut conn = self.conn().await?;
            conn.transaction::<_, StoreError, _>(|conn| {
                async move {
                    conn.batch_execute(planner).await?;
                    Ok(query.load(conn).await?)
                }
                .scope_boxed()
            })
            .await
        })
        .await
    }

    /// Checks that Postgres answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.execute(diesel::sql_query("SELECT 1").cached())
            .await
            .map(drop)
    }
}
