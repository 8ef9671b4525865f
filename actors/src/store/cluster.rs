//! Cluster statements: the partition count a database was set up with, node heartbeats,
//! partition leases (renew, acquire with `FOR UPDATE SKIP LOCKED`, release) with their
//! history, the order lock every `rt_jobs` writer takes, and what `keel status` shows.
//!
//! Every statement that locks lease rows locks them in partition order, so a node's renewal
//! and its processor's fenced commit never deadlock.

use super::CacheExt;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Double, Integer, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use scoped_futures::ScopedFutureExt;
use serde::Serialize;

use super::{Store, StoreError};

/// Advisory lock key every transaction that inserts `rt_jobs` or `wh_jobs` takes first, so
/// their ids commit in increasing order even with several nodes writing: routers and
/// uploaders read "every id after the last one I loaded". (Advisory locks are per database.)
const ORDER_LOCK: i64 = 0x6b65_656c_0002;

/// Takes the order lock for the rest of the transaction on `conn`.
pub(crate) async fn take_order_lock(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<BigInt, _>(ORDER_LOCK)
        .cached()
        .execute(conn)
        .await?;
    Ok(())
}

/// One lease a node holds: the partition and the epoch it was acquired with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct HeldLease {
    /// Partition number.
    #[diesel(sql_type = Integer)]
    pub partition: i32,
    /// Fencing token: grows with every acquisition of this partition.
    #[diesel(sql_type = BigInt)]
    pub epoch: i64,
}

/// A node as `keel status` shows it.
#[derive(Debug, Clone, QueryableByName, Serialize)]
pub struct NodeRow {
    /// Node id.
    #[diesel(sql_type = Text)]
    pub node_id: String,
    /// Address its HTTP server listens on.
    #[diesel(sql_type = Text)]
    pub addr: String,
    /// `worker` (takes leases) or `gateway` (ingest only).
    #[diesel(sql_type = Text)]
    pub role: String,
    /// When the process started.
    #[diesel(sql_type = Timestamptz)]
    pub started_at: DateTime<Utc>,
    /// Last heartbeat.
    #[diesel(sql_type = Timestamptz)]
    pub last_seen: DateTime<Utc>,
    /// Seconds since the last heartbeat.
    #[diesel(sql_type = Double)]
    pub seen_secs_ago: f64,
}

/// A lease as `keel status` shows it.
#[derive(Debug, Clone, QueryableByName, Serialize)]
pub struct LeaseRow {
    /// Partition number.
    #[diesel(sql_type = Integer)]
    pub partition: i32,
    /// Holder, if any (a holder whose lease expired is shown with `expired`).
    #[diesel(sql_type = Nullable<Text>)]
    pub owner: Option<String>,
    /// Acquisitions so far.
    #[diesel(sql_type = BigInt)]
    pub epoch: i64,
    /// Seconds since the holder acquired it.
    #[diesel(sql_type = Nullable<Double>)]
    pub held_secs: Option<f64>,
    /// Seconds until it expires unless renewed (negative: expired).
    #[diesel(sql_type = Nullable<Double>)]
    pub expires_in_secs: Option<f64>,
    /// True when the lease is past its expiry.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub expired: bool,
}

/// One tenure of a lease, from `lease_history`.
#[derive(Debug, Clone, QueryableByName, Serialize)]
pub struct Tenure {
    /// Partition number.
    #[diesel(sql_type = Integer)]
    pub partition: i32,
    /// Epoch of this tenure.
    #[diesel(sql_type = BigInt)]
    pub epoch: i64,
    /// Holder.
    #[diesel(sql_type = Text)]
    pub owner: String,
    /// Acquired at.
    #[diesel(sql_type = Timestamptz)]
    pub acquired_at: DateTime<Utc>,
    /// Released at, or the last expiry its holder renewed.
    #[diesel(sql_type = Timestamptz)]
    pub ended_at: DateTime<Utc>,
    /// True when the holder released it (false: it expired or is still held).
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub released: bool,
}

#[derive(QueryableByName)]
struct Partitions {
    #[diesel(sql_type = Integer)]
    partitions: i32,
}

#[derive(QueryableByName)]
struct Live {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Renews every lease `$1` holds (rows locked in partition order) and extends the
/// history of those tenures.
const RENEW: &str = r#"
WITH mine AS (
    SELECT partition FROM leases WHERE owner = $1 ORDER BY partition FOR UPDATE
), r AS (
    UPDATE leases l SET expires_at = now() + make_interval(secs => $2)
    FROM mine WHERE l.partition = mine.partition
    RETURNING l.partition, l.epoch, l.expires_at
), h AS (
    UPDATE lease_history h SET ended_at = r.expires_at
    FROM r WHERE h.partition = r.partition AND h.epoch = r.epoch
)
SELECT partition, epoch FROM r
"#;

/// Takes up to `$3` free or expired leases (skipping rows another node is updating), bumps
/// their epochs and opens a tenure for each.
const ACQUIRE: &str = r#"
WITH c AS (
    SELECT partition FROM leases
    WHERE owner IS NULL OR expires_at < now()
    ORDER BY partition LIMIT $3
    FOR UPDATE SKIP LOCKED
), a AS (
    UPDATE leases l SET owner = $1, epoch = l.epoch + 1, acquired_at = now(),
                        expires_at = now() + make_interval(secs => $2)
    FROM c WHERE l.partition = c.partition
    RETURNING l.partition, l.epoch, l.acquired_at, l.expires_at
), h AS (
    INSERT INTO lease_history (partition, epoch, owner, acquired_at, ended_at)
    SELECT partition, epoch, $1, acquired_at, expires_at FROM a
)
SELECT partition, epoch FROM a
"#;

/// Gives up leases `$1` holds (all, or those in `$2`) and closes their tenures.
const RELEASE: &str = r#"
WITH mine AS (
    SELECT partition FROM leases
    WHERE owner = $1 AND ($2::int4[] IS NULL OR partition = ANY($2))
    ORDER BY partition FOR UPDATE
), r AS (
    UPDATE leases l SET owner = NULL, expires_at = now()
    FROM mine WHERE l.partition = mine.partition
    RETURNING l.partition, l.epoch
), h AS (
    UPDATE lease_history h SET ended_at = now(), released = true
    FROM r WHERE h.partition = r.partition AND h.epoch = r.epoch
)
SELECT partition, epoch FROM r
"#;

impl Store {
    /// Records the partition count on first use and creates the lease rows; returns the
    /// count the database was set up with (the caller refuses to run with another).
    pub async fn cluster_init(&self, partitions: i32) -> Result<i32, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            conn.transaction::<_, StoreError, _>(|conn| {
                async move {
                    diesel::sql_query(
                        "INSERT INTO cluster_settings (partitions) VALUES ($1) ON CONFLICT DO NOTHING",
                    )
                    .bind::<Integer, _>(partitions)
                    .cached()
                    .execute(conn)
                    .await?;
                    let set: Vec<Partitions> =
                        diesel::sql_query("SELECT partitions FROM cluster_settings")
                            .cached()
                            .load(conn)
                            .await?;
                    let set = set.into_iter().next().map_or(partitions, |p| p.partitions);
                    diesel::sql_query(
                        "INSERT INTO leases (partition) SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
                    )
                    .bind::<Integer, _>(set)
                    .cached()
                    .execute(conn)
                    .await?;
                    Ok(set)
                }
                .scope_boxed()
            })
            .await
        })
        .await
    }

    /// Announces this node (`role`: `worker` or `gateway`), forgets nodes silent for an
    /// hour, and returns how many worker nodes are live (heard from within `ttl_secs`),
    /// this one included when it is a worker.
    pub async fn node_heartbeat(
        &self,
        addr: &str,
        role: &str,
        started_at: DateTime<Utc>,
        ttl_secs: f64,
    ) -> Result<i64, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let rows: Vec<Live> = diesel::sql_query(
                "WITH up AS ( \
                   INSERT INTO nodes (node_id, addr, role, started_at, last_seen) VALUES ($1, $2, $3, $4, now()) \
                   ON CONFLICT (node_id) DO UPDATE SET addr = excluded.addr, role = excluded.role, \
                     started_at = excluded.started_at, last_seen = now() RETURNING 1), \
                 gone AS (DELETE FROM nodes WHERE last_seen < now() - interval '1 hour' AND node_id <> $1) \
                 SELECT count(*) AS n FROM nodes \
                 WHERE role = 'worker' AND node_id <> $1 AND last_seen > now() - make_interval(secs => $5)",
            )
            .bind::<Text, _>(&*self.node)
            .bind::<Text, _>(addr)
            .bind::<Text, _>(role)
            .bind::<Timestamptz, _>(started_at)
            .bind::<Double, _>(ttl_secs)
            .cached()
            .load(&mut conn)
            .await?;
            let others = rows.into_iter().next().map_or(0, |r| r.n);
            Ok(others + i64::from(role == "worker"))
        })
        .await
    }

    /// Renews every lease this node holds for `ttl_secs`; returns them. A lease another
    /// node took over is not among them.
    pub async fn renew_leases(&self, ttl_secs: f64) -> Result<Vec<HeldLease>, StoreError> {
        self.load_all(
            diesel::sql_query(RENEW)
                .bind::<Text, _>(&*self.node)
                .bind::<Double, _>(ttl_secs)
                .cached(),
        )
        .await
    }

    /// Acquires up to `n` free or expired leases for `ttl_secs`.
    pub async fn acquire_leases(
        &self,
        ttl_secs: f64,
        n: i32,
    ) -> Result<Vec<HeldLease>, StoreError> {
        self.load_all(
            diesel::sql_query(ACQUIRE)
                .bind::<Text, _>(&*self.node)
                .bind::<Double, _>(ttl_secs)
                .bind::<Integer, _>(n)
                .cached(),
        )
        .await
    }

    /// Releases this node's leases of `partitions` (all of them with `None`).
    pub async fn release_leases(
        &self,
        partitions: Option<Vec<i32>>,
    ) -> Result<Vec<HeldLease>, StoreError> {
        self.load_all(
            diesel::sql_query(RELEASE)
                .bind::<Text, _>(&*self.node)
                .bind::<Nullable<Array<Integer>>, _>(partitions)
                .cached(),
        )
        .await
    }

    /// Leaves the cluster (graceful shutdown): releases every lease this node holds and
    /// removes its `nodes` row in one transaction, so no other node ever sees the leases
    /// free while this node still counts as live (it would take only its share of a
    /// cluster that still includes this node). Returns the leases released.
    pub async fn leave_cluster(&self) -> Result<Vec<HeldLease>, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            conn.transaction::<_, StoreError, _>(|conn| {
                async move {
                    diesel::sql_query("DELETE FROM nodes WHERE node_id = $1")
                        .bind::<Text, _>(&*self.node)
                        .cached()
                        .execute(conn)
                        .await?;
                    Ok(diesel::sql_query(RELEASE)
                        .bind::<Text, _>(&*self.node)
                        .bind::<Nullable<Array<Integer>>, _>(None::<Vec<i32>>)
                        .cached()
                        .load(conn)
                        .await?)
                }
                .scope_boxed()
            })
            .await
        })
        .await
    }

    /// Every known node, and every lease, for `keel status`.
    pub async fn cluster_status(&self) -> Result<(Vec<NodeRow>, Vec<LeaseRow>), StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let nodes: Vec<NodeRow> = diesel::sql_query(
                "SELECT node_id, addr, role, started_at, last_seen, \
                 extract(epoch FROM now() - last_seen)::float8 AS seen_secs_ago \
                 FROM nodes ORDER BY node_id",
            )
            .cached()
            .load(&mut conn)
            .await?;
            let leases: Vec<LeaseRow> = diesel::sql_query(
                "SELECT partition, owner, epoch, \
                 extract(epoch FROM now() - acquired_at)::float8 AS held_secs, \
                 CASE WHEN owner IS NULL THEN NULL ELSE extract(epoch FROM expires_at - now())::float8 END AS expires_in_secs, \
                 (owner IS NOT NULL AND expires_at < now()) AS expired \
                 FROM leases ORDER BY partition",
            )
            .cached()
            .load(&mut conn)
            .await?;
            Ok((nodes, leases))
        })
        .await
    }

    /// Every lease tenure, in (partition, epoch) order.
    pub async fn lease_history(&self) -> Result<Vec<Tenure>, StoreError> {
        self.load_all(
            diesel::sql_query(
                "SELECT partition, epoch, owner, acquired_at, ended_at, released \
                 FROM lease_history ORDER BY partition, epoch",
            )
            .cached(),
        )
        .await
    }
}
