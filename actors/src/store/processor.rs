//! Processor statements: read the unconsumed `gw_jobs` of this node's partitions, look up
//! dedup owners, and commit the outputs (`rt_jobs`, `wh_jobs`, `routing_jobs` per request, `routing_log` for replays) with the
//! per-partition checkpoints and the deletion of the consumed `gw_jobs`, all in one
//! transaction fenced on this node's leases.

use super::CacheExt;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Bytea, Integer, Jsonb, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, RunQueryDsl};
use scoped_futures::ScopedFutureExt;
use serde_json::Value;

use super::{Store, StoreError, WhJobInsert};

/// Checkpoint stage name of the processor.
pub const PROCESSOR_STAGE: &str = "processor";

/// One stored request as the processor reads it.
#[derive(Debug, QueryableByName)]
pub struct GwJob {
    /// Row id.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// Source id.
    #[diesel(sql_type = Text)]
    pub source_id: String,
    /// JSON array of events, as text.
    #[diesel(sql_type = Text)]
    pub payload: String,
    /// When the gateway received it.
    #[diesel(sql_type = Timestamptz)]
    pub received_at: DateTime<Utc>,
    /// Number of events in `payload`.
    #[diesel(sql_type = Integer)]
    pub event_count: i32,
    /// Partition of its events.
    #[diesel(sql_type = Integer)]
    pub partition: i32,
    /// Dedup keys of its events that were already in the window when it was stored (to
    /// drop); `None` for a row stored before the gateway recorded them (look them up).
    #[diesel(sql_type = Nullable<Array<diesel::sql_types::Uuid>>)]
    pub duplicates: Option<Vec<uuid::Uuid>>,
    /// Rows written by `keel replay --destination`: the only destinations to route to.
    #[diesel(sql_type = Nullable<Array<Text>>)]
    pub only_destinations: Option<Vec<String>>,
}

#[derive(QueryableByName)]
struct Part {
    #[diesel(sql_type = Integer)]
    #[allow(dead_code)]
    partition: i32,
}

/// The `gw_jobs` rows a batch consumed: deleted in its commit, which fails (fenced) unless
/// this node still holds every partition involved and every row was still there.
#[derive(Debug, Clone, Default)]
pub struct Consumed {
    /// Row ids.
    pub ids: Vec<i64>,
    /// (partition, highest id consumed in it): the checkpoints to advance.
    pub positions: Vec<(i32, i64)>,
    /// Raw backup enabled: the consumed rows' backup lines, packed, inserted into
    /// `backup_jobs` in the same commit that deletes the rows.
    pub backup: Option<Vec<BackupPack>>,
}

/// The backup lines of some consumed requests of one hour, gzipped (one gzip member):
/// one `backup_jobs` row.
#[derive(Debug, Clone)]
pub struct BackupPack {
    /// The lowest `gw_jobs` id among them (the row's id; upload order).
    pub id: i64,
    /// The earliest time the gateway received one of them (their hour).
    pub received_at: DateTime<Utc>,
    /// Events in them.
    pub event_count: i32,
    /// Their lines, gzipped.
    pub lines_gz: Vec<u8>,
}

/// Lowest and highest id of the rows one insert wrote.
#[derive(QueryableByName)]
struct IdRange {
    #[diesel(sql_type = Nullable<BigInt>)]
    lo: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    hi: Option<i64>,
}

#[derive(QueryableByName)]
struct Owner {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    key: uuid::Uuid,
    #[diesel(sql_type = BigInt)]
    job_id: i64,
}

/// One `rt_jobs` row to insert.
#[derive(Debug, Clone)]
pub struct RtJobInsert {
    /// Destination id.
    pub destination_id: String,
    /// userId, else anonymousId.
    pub ordering_key: String,
    /// The event's messageId.
    pub message_id: String,
    /// Source id.
    pub source_id: String,
    /// Destination-ready payload (JSON text).
    pub payload: String,
    /// Partition of its ordering key.
    pub partition: i32,
}

/// One event dead-lettered by the processor (a transformation or the destination mapping
/// failed for it): a `dlq_jobs` row of stage `transform` holding the event itself.
#[derive(Debug, Clone)]
pub struct DlqInsert {
    /// Destination id.
    pub destination_id: String,
    /// userId, else anonymousId.
    pub ordering_key: String,
    /// The event's messageId.
    pub message_id: String,
    /// Source id.
    pub source_id: String,
    /// The event as the failing step received it (JSON text).
    pub payload: String,
    /// Why (with the script's stack when there is one).
    pub reason: String,
    /// Partition of its ordering key.
    pub partition: i32,
}

/// One `routing_log` row: what the processor decided for one event.
#[derive(Debug, Clone)]
pub struct RoutingRecord {
    /// Source id.
    pub source_id: String,
    /// The event's messageId.
    pub message_id: String,
    /// The `gw_jobs` row it came from.
    pub job_id: i64,
    /// Destination ids it was routed to.
    pub routed: Vec<String>,
    /// `{destination id: reason}` for destinations it was not routed to (JSON text).
    pub filtered: Value,
}

/// One processed batch, ready to commit: each output as the columns its statement binds
/// (one array per column, built here row by row), the consumed requests and the replayed
/// dead letters. The processor pushes rows; [`Store::commit_processed`] writes it whole.
#[derive(Default)]
pub struct ProcessedBatch {
    jobs: RtColumns,
    warehouse: WhColumns,
    dead: DlqColumns,
    routing: RoutingColumns,
    /// The `gw_jobs` rows this batch consumed (none for a replay of dead letters).
    pub consumed: Option<Consumed>,
    /// Dead letters (stage `transform`) this batch replayed, deleted with the commit.
    pub replayed: Vec<i64>,
}

impl ProcessedBatch {
    /// A batch of these rows (consuming nothing, replaying nothing until set).
    pub fn from_rows(
        jobs: Vec<RtJobInsert>,
        warehouse: Vec<WhJobInsert>,
        dead: Vec<DlqInsert>,
        routing: impl IntoIterator<Item = RoutingRecord>,
    ) -> Self {
        let mut batch = Self::default();
        for j in jobs {
            batch.push_job(j);
        }
        for w in warehouse {
            batch.push_warehouse(w);
        }
        for d in dead {
            batch.push_dead(d);
        }
        for r in routing {
            batch.push_routing(r);
        }
        batch
    }

    /// Adds a delivery job: the next job of its destination and partition's bundle (an
    /// `rt_jobs` row holds each commit's jobs of one destination and partition, in order).
    pub fn push_job(&mut self, j: RtJobInsert) {
        use std::collections::hash_map::Entry;
        let c = &mut self.jobs;
        let next = c.bundles.len();
        let at = match c.open.entry((j.destination_id, j.partition)) {
            Entry::Occupied(o) if c.bundles[*o.get()].len() < MAX_BUNDLE_JOBS => *o.get(),
            Entry::Occupied(mut o) => {
                c.bundles.push(Bundle::new(o.key()));
                *o.get_mut() = next;
                next
            }
            Entry::Vacant(v) => {
                c.bundles.push(Bundle::new(v.key()));
                v.insert(next);
                next
            }
        };
        let bundle = &mut c.bundles[at];
        bundle.keys.push(j.ordering_key);
        bundle.mids.push(j.message_id);
        bundle.srcs.push(j.source_id);
        bundle.payloads.push(j.payload);
    }

    /// Adds a warehouse job (`wh_jobs` row).
    pub fn push_warehouse(&mut self, w: WhJobInsert) {
        let c = &mut self.warehouse;
        c.dest.push(w.destination_id);
        c.src.push(w.source_id);
        c.count.push(w.event_count);
        c.payload.push(w.payload);
    }

    /// Adds a dead letter of stage `transform`.
    pub fn push_dead(&mut self, d: DlqInsert) {
        let c = &mut self.dead;
        c.part.push(d.partition);
        c.dest.push(d.destination_id);
        c.key.push(d.ordering_key);
        c.mid.push(d.message_id);
        c.src.push(d.source_id);
        c.payload.push(d.payload);
        c.reason.push(super::text_without_nul(d.reason));
    }

    /// Adds a routing record. Records of a stored request (job id > 0) arrive together and
    /// become one `routing_jobs` row per request; the others (replays) one `routing_log`
    /// row each.
    pub fn push_routing(&mut self, r: RoutingRecord) {
        let c = &mut self.routing;
        if r.job_id <= 0 {
            c.r_src.push(r.source_id);
            c.r_mid.push(r.message_id);
            c.r_job.push(r.job_id);
            c.r_routed.push(Value::from(r.routed));
            c.r_filtered.push(super::without_nul(r.filtered));
            return;
        }
        match &mut c.open {
            Some(open) if open.job_id == r.job_id => open.add(r.message_id, r.routed, r.filtered),
            _ => {
                c.close_request();
                c.open = Some(OpenRequest {
                    job_id: r.job_id,
                    source_id: r.source_id,
                    mids: vec![r.message_id],
                    routed: r.routed,
                    filtered: r.filtered,
                    per_event: None,
                });
            }
        }
    }
}

/// Jobs one `rt_jobs` row holds at most: a larger share of one commit for one destination
/// and partition continues in the next row.
const MAX_BUNDLE_JOBS: usize = 1000;

/// `rt_jobs` rows to insert, in order of their first jobs.
#[derive(Default)]
struct RtColumns {
    /// The bundle still taking jobs of each (destination, partition), by index.
    open: std::collections::HashMap<(String, i32), usize>,
    bundles: Vec<Bundle>,
}

/// One `rt_jobs` row: a destination and partition's jobs, as its array columns.
struct Bundle {
    dest: String,
    part: i32,
    keys: Vec<String>,
    mids: Vec<String>,
    srcs: Vec<String>,
    payloads: Vec<String>,
}

impl Bundle {
    fn new((dest, part): &(String, i32)) -> Self {
        Self {
            dest: dest.clone(),
            part: *part,
            keys: Vec::new(),
            mids: Vec::new(),
            srcs: Vec::new(),
            payloads: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }
}

impl RtColumns {
    /// No job was added.
    fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }
}

/// Rows one `rt_jobs` insert statement writes at most.
const BUNDLES_PER_STATEMENT: usize = 16;

/// The insert of `n` rows (1..=[`BUNDLES_PER_STATEMENT`]) as multi-row VALUES, answering the
/// id range written: one constant text per `n`, so each is prepared once per connection.
fn insert_bundles_sql(n: usize) -> &'static str {
    static TEXTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        (1..=BUNDLES_PER_STATEMENT)
            .map(|n| {
                let rows: Vec<String> = (0..n)
                    .map(|i| {
                        let p = i * 6;
                        format!(
                            "(${}, ${}, ${}, ${}, ${}, ${})",
                            p + 1,
                            p + 2,
                            p + 3,
                            p + 4,
                            p + 5,
                            p + 6
                        )
                    })
                    .collect();
                format!(
                    "WITH ins AS (INSERT INTO rt_jobs (destination_id, partition, ordering_keys, \
                     message_ids, source_ids, payloads) VALUES {} RETURNING id) \
                     SELECT min(id) AS lo, max(id) AS hi FROM ins",
                    rows.join(", ")
                )
            })
            .collect()
    });
    &texts[n.clamp(1, BUNDLES_PER_STATEMENT) - 1]
}

/// `wh_jobs` columns.
#[derive(Default)]
struct WhColumns {
    dest: Vec<String>,
    src: Vec<String>,
    count: Vec<i32>,
    payload: Vec<String>,
}

/// `dlq_jobs` columns (stage `transform`).
#[derive(Default)]
struct DlqColumns {
    dest: Vec<String>,
    key: Vec<String>,
    mid: Vec<String>,
    src: Vec<String>,
    payload: Vec<String>,
    reason: Vec<String>,
    part: Vec<i32>,
}

/// `routing_log` columns (`r_*`, one row per replayed event) and `routing_jobs` columns
/// (`g_*`, one row per request). A request whose events were all routed alike (the usual
/// case) gets its one decision and no messageIds; otherwise its messageIds go into one
/// flat array for all such requests, `g_mids`, where `g_row` names each one's request
/// (1-based, as Postgres' ordinality), and its decisions are per-event arrays.
#[derive(Default)]
struct RoutingColumns {
    r_src: Vec<String>,
    r_mid: Vec<String>,
    r_job: Vec<i64>,
    r_routed: Vec<Value>,
    r_filtered: Vec<Value>,
    g_job: Vec<i64>,
    g_src: Vec<String>,
    g_mids: Vec<String>,
    g_row: Vec<i32>,
    g_routed: Vec<Value>,
    g_filtered: Vec<Value>,
    /// The request whose records are arriving (not in the `g_*` columns yet).
    open: Option<OpenRequest>,
}

/// The records of one request so far.
struct OpenRequest {
    job_id: i64,
    source_id: String,
    /// Its events' messageIds, in order.
    mids: Vec<String>,
    /// The first event's decision (destinations, `{destination: reason}`), as recorded.
    routed: Vec<String>,
    filtered: Value,
    /// Once an event was decided otherwise than the first: every event's decision
    /// (`routed`, `filtered`), NUL-free.
    per_event: Option<(Vec<Value>, Vec<Value>)>,
}

impl OpenRequest {
    /// Adds the next event's record.
    fn add(&mut self, mid: String, routed: Vec<String>, filtered: Value) {
        self.mids.push(mid);
        if self.per_event.is_none() && routed == self.routed && filtered == self.filtered {
            return;
        }
        let (to, out) = self.per_event.get_or_insert_with(|| {
            let n = self.mids.len() - 1;
            let first_to = Value::from(self.routed.clone());
            let first_out = super::without_nul(self.filtered.clone());
            (vec![first_to; n], vec![first_out; n])
        });
        to.push(Value::from(routed));
        out.push(super::without_nul(filtered));
    }
}

impl RoutingColumns {
    /// Ends the open request: its decision (one for all its events, or per event with its
    /// messageIds) joins the columns.
    fn close_request(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        self.g_job.push(open.job_id);
        self.g_src.push(open.source_id);
        match open.per_event {
            None => {
                self.g_routed.push(Value::from(open.routed));
                self.g_filtered.push(super::without_nul(open.filtered));
            }
            Some((to, out)) => {
                let row = self.g_job.len() as i32;
                self.g_row.extend(std::iter::repeat_n(row, open.mids.len()));
                self.g_mids.extend(open.mids);
                self.g_routed.push(Value::Array(to));
                self.g_filtered.push(Value::Array(out));
            }
        }
    }
}

/// The connection a commit's statements run on (inside its transaction).
type Conn = diesel_async::AsyncPgConnection;

impl Consumed {
    /// Checks this node still holds the partitions of the consumed rows and deletes them
    /// (and with the raw backup on inserts their packs into `backup_jobs`);
    /// [`StoreError::Fenced`] when a lease or a row is gone, so the whole commit rolls back.
    async fn fence_and_take(&self, conn: &mut Conn, node: &str) -> Result<(), StoreError> {
        let mut fence: Vec<i32> = self.positions.iter().map(|(p, _)| *p).collect();
        fence.sort_unstable();
        fence.dedup();
        let held: Vec<Part> = diesel::sql_query(
            "SELECT partition FROM leases WHERE owner = $1 AND partition = ANY($2) \
             ORDER BY partition FOR SHARE",
        )
        .bind::<Text, _>(node)
        .bind::<Array<Integer>, _>(&fence)
        .cached()
        .load(conn)
        .await?;
        if held.len() != fence.len() {
            return Err(StoreError::Fenced(format!(
                "node {node} no longer holds all of partitions {fence:?}"
            )));
        }
        let deleted = diesel::sql_query("DELETE FROM gw_jobs WHERE id = ANY($1)")
            .bind::<Array<BigInt>, _>(&self.ids)
            .cached()
            .execute(conn)
            .await?;
        if deleted != self.ids.len() {
            return Err(StoreError::Fenced(format!(
                "{} of {} requests were consumed by another node",
                self.ids.len() - deleted,
                self.ids.len()
            )));
        }
        if let Some(packs) = self.backup.as_ref().filter(|p| !p.is_empty()) {
            let ids: Vec<i64> = packs.iter().map(|p| p.id).collect();
            let at: Vec<DateTime<Utc>> = packs.iter().map(|p| p.received_at).collect();
            let counts: Vec<i32> = packs.iter().map(|p| p.event_count).collect();
            let blobs: Vec<&[u8]> = packs.iter().map(|p| p.lines_gz.as_slice()).collect();
            diesel::sql_query(
                "INSERT INTO backup_jobs (id, source_id, received_at, partition, event_count, lines_gz) \
                 SELECT id, '', at, -1, n, gz \
                 FROM unnest($1::int8[], $2::timestamptz[], $3::int4[], $4::bytea[]) AS u(id, at, n, gz)",
            )
            .bind::<Array<BigInt>, _>(ids)
            .bind::<Array<Timestamptz>, _>(at)
            .bind::<Array<Integer>, _>(counts)
            .bind::<Array<Bytea>, _>(blobs)
            .cached()
            .execute(conn)
            .await?;
        }
        Ok(())
    }

    /// Advances each consumed partition's processor checkpoint.
    async fn advance_checkpoints(self, conn: &mut Conn) -> Result<(), StoreError> {
        let (cp_part, cp_pos): (Vec<i32>, Vec<i64>) = self.positions.into_iter().unzip();
        diesel::sql_query(
            "INSERT INTO checkpoints (stage, partition, position, updated_at) \
             SELECT $1, p, n, now() FROM unnest($2::int4[], $3::int8[]) AS u(p, n) \
             ON CONFLICT (stage, partition) DO UPDATE \
             SET position = greatest(checkpoints.position, excluded.position), updated_at = now()",
        )
        .bind::<Text, _>(PROCESSOR_STAGE)
        .bind::<Array<Integer>, _>(cp_part)
        .bind::<Array<BigInt>, _>(cp_pos)
        .cached()
        .execute(conn)
        .await?;
        Ok(())
    }
}

impl RtColumns {
    /// Inserts the delivery jobs, one row per bundle in order (ids follow it: VALUES rows
    /// are inserted in order); answers the id range written (explain finds an event's
    /// pending jobs in it, per destination, on the `(destination_id, id)` index).
    async fn insert(self, conn: &mut Conn) -> Result<IdRange, StoreError> {
        let mut range = IdRange { lo: None, hi: None };
        let mut bundles = self.bundles.into_iter().peekable();
        while bundles.peek().is_some() {
            let chunk: Vec<Bundle> = bundles.by_ref().take(BUNDLES_PER_STATEMENT).collect();
            let mut query = diesel::sql_query(insert_bundles_sql(chunk.len())).into_boxed();
            for b in chunk {
                query = query
                    .bind::<Text, _>(b.dest)
                    .bind::<Integer, _>(b.part)
                    .bind::<Array<Text>, _>(b.keys)
                    .bind::<Array<Text>, _>(b.mids)
                    .bind::<Array<Text>, _>(b.srcs)
                    .bind::<Array<Text>, _>(b.payloads);
            }
            let written: Vec<IdRange> = query.cached().load(conn).await?;
            if let Some(w) = written.into_iter().next() {
                range.lo = range.lo.or(w.lo);
                range.hi = w.hi.or(range.hi);
            }
        }
        Ok(range)
    }
}

impl WhColumns {
    /// Inserts the warehouse jobs.
    async fn insert(self, conn: &mut Conn) -> Result<(), StoreError> {
        if self.dest.is_empty() {
            return Ok(());
        }
        diesel::sql_query(
            "INSERT INTO wh_jobs (destination_id, source_id, event_count, payload) \
             SELECT d, s, n, p FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[]) \
             AS u(d, s, n, p)",
        )
        .bind::<Array<Text>, _>(self.dest)
        .bind::<Array<Text>, _>(self.src)
        .bind::<Array<diesel::sql_types::Integer>, _>(self.count)
        .bind::<Array<Text>, _>(self.payload)
        .cached()
        .execute(conn)
        .await?;
        Ok(())
    }
}

impl DlqColumns {
    /// Inserts the dead letters of stage `transform`.
    async fn insert(self, conn: &mut Conn) -> Result<(), StoreError> {
        if self.dest.is_empty() {
            return Ok(());
        }
        // Ids come from rt_jobs' sequence: dead letters of both stages share it.
        diesel::sql_query(
            "INSERT INTO dlq_jobs (id, destination_id, ordering_key, message_id, source_id, payload, \
               attempts, reason, created_at, stage, partition) \
             SELECT nextval('rt_jobs_id_seq'), d, k, m, s, p::json, 0, r, now(), 'transform', n \
             FROM (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[]) \
                   WITH ORDINALITY AS u(d, k, m, s, p, r, n, o) ORDER BY o) x",
        )
        .bind::<Array<Text>, _>(self.dest)
        .bind::<Array<Text>, _>(self.key)
        .bind::<Array<Text>, _>(self.mid)
        .bind::<Array<Text>, _>(self.src)
        .bind::<Array<Text>, _>(self.payload)
        .bind::<Array<Text>, _>(self.reason)
        .bind::<Array<Integer>, _>(self.part)
        .cached()
        .execute(conn)
        .await?;
        Ok(())
    }
}

impl RoutingColumns {
    /// Inserts the `routing_jobs` rows (one per request) and `routing_log` rows (replays),
    /// each naming the id range the commit's delivery jobs took.
    async fn insert(mut self, conn: &mut Conn, range: &IdRange) -> Result<(), StoreError> {
        self.close_request();
        if !self.g_job.is_empty() {
            diesel::sql_query(
                // Each request's messageIds gathered from the flat array in one pass (a
                // slice per request would walk the array from its start every time); a
                // request routed alike throughout has none (NULL).
                "INSERT INTO routing_jobs (job_id, source_id, message_ids, routed, filtered, rt_first, rt_last) \
                 SELECT u.j, u.s, m.ids, u.r, u.f, $6, $7 \
                 FROM unnest($1::int8[], $2::text[], $4::jsonb[], $5::jsonb[]) WITH ORDINALITY AS u(j, s, r, f, n) \
                 LEFT JOIN (SELECT x.g, array_agg(x.mid ORDER BY x.o) AS ids \
                       FROM unnest($3::text[], $8::int4[]) WITH ORDINALITY AS x(mid, g, o) GROUP BY x.g) m \
                 ON m.g = u.n",
            )
            .bind::<Array<BigInt>, _>(self.g_job)
            .bind::<Array<Text>, _>(self.g_src)
            .bind::<Array<Text>, _>(self.g_mids)
            .bind::<Array<Jsonb>, _>(self.g_routed)
            .bind::<Array<Jsonb>, _>(self.g_filtered)
            .bind::<Nullable<BigInt>, _>(range.lo)
            .bind::<Nullable<BigInt>, _>(range.hi)
            .bind::<Array<Integer>, _>(self.g_row)
            .cached()
            .execute(conn)
            .await?;
        }
        if !self.r_src.is_empty() {
            diesel::sql_query(
                "INSERT INTO routing_log (source_id, message_id, job_id, routed_to, filtered, rt_first, rt_last) \
                 SELECT s, m, j, r, f, $6, $7 \
                 FROM unnest($1::text[], $2::text[], $3::int8[], $4::jsonb[], $5::jsonb[]) AS u(s, m, j, r, f)",
            )
            .bind::<Array<Text>, _>(self.r_src)
            .bind::<Array<Text>, _>(self.r_mid)
            .bind::<Array<BigInt>, _>(self.r_job)
            .bind::<Array<Jsonb>, _>(self.r_routed)
            .bind::<Array<Jsonb>, _>(self.r_filtered)
            .bind::<Nullable<BigInt>, _>(range.lo)
            .bind::<Nullable<BigInt>, _>(range.hi)
            .cached()
            .execute(conn)
            .await?;
        }
        Ok(())
    }
}

impl Store {
    /// Up to `limit` unconsumed requests of `partitions`, in id order. No cursor: with
    /// several nodes writing, a lower id may commit after a higher one was read, and it must
    /// still be read (consumed rows are deleted, so "unconsumed" is "still there").
    pub async fn fetch_gw_jobs(
        &self,
        partitions: &[i32],
        limit: i64,
    ) -> Result<Vec<GwJob>, StoreError> {
        self.load_all(
diesel::sql_query(
                "SELECT id, source_id, payload, received_at, event_count, partition, duplicates, only_destinations FROM gw_jobs \
                 WHERE partition = ANY($1) ORDER BY id LIMIT $2",
            )
            .bind::<Array<Integer>, _>(partitions)
            .bind::<BigInt, _>(limit)
            .cached(),
)
        .await
    }

    /// For each (source, messageId) key, the job that first carried it, if still in the window.
    pub async fn dedup_owners(
        &self,
        keys: Vec<uuid::Uuid>,
    ) -> Result<std::collections::HashMap<uuid::Uuid, i64>, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let rows: Vec<Owner> =
                // One primary-key probe per key (LATERAL): the planner's estimate of a
                // growing, never-analysed dedup table must not turn this into a scan.
                diesel::sql_query(
                    "SELECT d.key, d.job_id FROM unnest($1::uuid[]) AS k(key) \
                     CROSS JOIN LATERAL (SELECT key, job_id FROM dedup WHERE dedup.key = k.key) d",
                )
                    .bind::<Array<diesel::sql_types::Uuid>, _>(keys)
                    .cached()
                    .load(&mut conn)
                    .await?;
            Ok(rows.into_iter().map(|o| (o.key, o.job_id)).collect())
        })
        .await
    }

    /// Commits one processed batch: deletes its `consumed` rows (fenced: this node must
    /// hold their partitions and every row must still be there, else nothing is written and
    /// [`StoreError::Fenced`] comes back), inserts its delivery jobs, warehouse jobs, dead
    /// letters and routing records under the order lock, deletes its `replayed` dead
    /// letters, and advances the partitions' checkpoints — one transaction.
    pub async fn commit_processed(&self, batch: ProcessedBatch) -> Result<(), StoreError> {
        let node = self.node.clone();
        let ProcessedBatch {
            jobs,
            warehouse,
            dead,
            routing,
            consumed,
            replayed,
        } = batch;
        self.timed(async {
            let mut conn = self.conn().await?;
            conn.transaction::<_, StoreError, _>(|conn| {
                async move {
                    // The order lock first: waiting for it (another node's commit) holds no
                    // lease row, so this node's renewals never queue behind that wait.
                    if !jobs.is_empty() || !warehouse.dest.is_empty() {
                        super::cluster::take_order_lock(conn).await?;
                    }
                    if let Some(c) = &consumed {
                        c.fence_and_take(conn, &node).await?;
                    }
                    let range = jobs.insert(conn).await?;
                    warehouse.insert(conn).await?;
                    dead.insert(conn).await?;
                    routing.insert(conn, &range).await?;
                    if !replayed.is_empty() {
                        diesel::sql_query("DELETE FROM dlq_jobs WHERE id = ANY($1)")
                            .bind::<Array<BigInt>, _>(replayed)
                            .cached()
                            .execute(conn)
                            .await?;
                    }
                    match consumed {
                        Some(c) => c.advance_checkpoints(conn).await,
                        None => Ok(()),
                    }
                }
                .scope_boxed()
            })
            .await
        })
        .await
    }

    /// Deletes routing records (`routing_jobs` and `routing_log` rows) older than
    /// `window_secs`, up to `limit` of each table; returns how many went.
    pub async fn prune_routing_log(
        &self,
        window_secs: f64,
        limit: i32,
    ) -> Result<usize, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let mut total = 0;
            for table in ["routing_jobs", "routing_log"] {
                total += diesel::sql_query(format!(
                    "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} \
                     WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2))"
                ))
                .bind::<diesel::sql_types::Double, _>(window_secs)
                .bind::<diesel::sql_types::Integer, _>(limit)
                .execute(&mut conn)
                .await?;
            }
            Ok(total)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(job_id: i64, mid: &str, routed: &[&str], filtered: Value) -> RoutingRecord {
        RoutingRecord {
            source_id: "src".into(),
            message_id: mid.into(),
            job_id,
            routed: routed.iter().map(|d| (*d).to_owned()).collect(),
            filtered,
        }
    }

    #[test]
    fn a_request_routed_alike_keeps_one_decision_and_no_message_ids() {
        let mut batch = ProcessedBatch::default();
        for mid in ["a", "b", "c"] {
            batch.push_routing(record(7, mid, &["hook"], json!({"only_buy": "dropped"})));
        }
        // A second request whose third event was decided otherwise.
        batch.push_routing(record(8, "d", &["hook"], json!({})));
        batch.push_routing(record(8, "e", &["hook"], json!({})));
        batch.push_routing(record(8, "f", &[], json!({"hook": "no\u{0}pe"})));
        // A third one, alike again.
        batch.push_routing(record(9, "g", &[], json!({})));
        let mut c = batch.routing;
        c.close_request();
        assert_eq!(c.g_job, vec![7, 8, 9]);
        assert_eq!(c.g_mids, vec!["d", "e", "f"]);
        assert_eq!(
            c.g_row,
            vec![2, 2, 2],
            "1-based rows of the per-event request"
        );
        assert_eq!(
            c.g_routed,
            vec![json!(["hook"]), json!([["hook"], ["hook"], []]), json!([])]
        );
        assert_eq!(
            c.g_filtered,
            vec![
                json!({"only_buy": "dropped"}),
                json!([{}, {}, {"hook": "nope"}]),
                json!({}),
            ]
        );
    }
}
