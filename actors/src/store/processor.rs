//! Processor statements: read `gw_jobs` after the checkpoint, look up dedup owners, and
//! commit the outputs (`rt_jobs`, `wh_jobs`, `routing_log`) with the checkpoint and the deletion of the
//! consumed `gw_jobs`, all in one transaction.

use diesel::sql_types::{Array, BigInt, Jsonb, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, RunQueryDsl};
use scoped_futures::ScopedFutureExt;

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
}

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = BigInt)]
    position: i64,
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
    pub filtered: serde_json::Value,
}

/// `v` with every NUL character removed from its strings and keys: jsonb cannot hold
/// `\u0000`, and a filter reason may quote event data (a transform error message), so one
/// such reason must not fail the processor's whole commit again and again.
fn without_nul(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "")),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nul).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.replace('\0', ""), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

impl Store {
    /// The last `gw_jobs` id the processor consumed (0 when it never ran).
    pub async fn processor_checkpoint(&self) -> Result<i64, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let rows: Vec<Position> = diesel::sql_query(
                "SELECT position FROM checkpoints WHERE stage = $1 AND partition = 0",
            )
            .bind::<Text, _>(PROCESSOR_STAGE)
            .load(&mut conn)
            .await?;
            Ok(rows.into_iter().next().map_or(0, |r| r.position))
        })
        .await
    }

    /// Up to `limit` requests after `after`, in id order.
    pub async fn fetch_gw_jobs(&self, after: i64, limit: i64) -> Result<Vec<GwJob>, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            Ok(diesel::sql_query(
                "SELECT id, source_id, payload FROM gw_jobs WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind::<BigInt, _>(after)
            .bind::<BigInt, _>(limit)
            .load(&mut conn)
            .await?)
        })
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
                diesel::sql_query("SELECT key, job_id FROM dedup WHERE key = ANY($1)")
                    .bind::<Array<diesel::sql_types::Uuid>, _>(keys)
                    .load(&mut conn)
                    .await?;
            Ok(rows.into_iter().map(|o| (o.key, o.job_id)).collect())
        })
        .await
    }

    /// Commits one processed batch: inserts `jobs`, `warehouse`, `dead` and `routing`,
    /// deletes `gw_jobs` up to `last_id` and moves the checkpoint there — one transaction.
    /// A replay of dead letters passes no `last_id` and the `replayed` dlq ids to delete.
    pub async fn commit_processed(
        &self,
        jobs: Vec<RtJobInsert>,
        warehouse: Vec<WhJobInsert>,
        dead: Vec<DlqInsert>,
        routing: Vec<RoutingRecord>,
        last_id: Option<i64>,
        replayed: Vec<i64>,
    ) -> Result<(), StoreError> {
        let mut d_dest = Vec::with_capacity(dead.len());
        let mut d_key = Vec::with_capacity(dead.len());
        let mut d_mid = Vec::with_capacity(dead.len());
        let mut d_src = Vec::with_capacity(dead.len());
        let mut d_payload = Vec::with_capacity(dead.len());
        let mut d_reason = Vec::with_capacity(dead.len());
        for d in dead {
            d_dest.push(d.destination_id);
            d_key.push(d.ordering_key);
            d_mid.push(d.message_id);
            d_src.push(d.source_id);
            d_payload.push(d.payload);
            d_reason.push(d.reason);
        }
        let mut w_dest = Vec::with_capacity(warehouse.len());
        let mut w_src = Vec::with_capacity(warehouse.len());
        let mut w_count = Vec::with_capacity(warehouse.len());
        let mut w_payload = Vec::with_capacity(warehouse.len());
        for w in warehouse {
            w_dest.push(w.destination_id);
            w_src.push(w.source_id);
            w_count.push(w.event_count);
            w_payload.push(w.payload);
        }
        let mut dest = Vec::with_capacity(jobs.len());
        let mut keys = Vec::with_capacity(jobs.len());
        let mut mids = Vec::with_capacity(jobs.len());
        let mut srcs = Vec::with_capacity(jobs.len());
        let mut payloads = Vec::with_capacity(jobs.len());
        for j in jobs {
            dest.push(j.destination_id);
            keys.push(j.ordering_key);
            mids.push(j.message_id);
            srcs.push(j.source_id);
            payloads.push(j.payload);
        }
        let mut r_src = Vec::with_capacity(routing.len());
        let mut r_mid = Vec::with_capacity(routing.len());
        let mut r_job = Vec::with_capacity(routing.len());
        let mut r_routed = Vec::with_capacity(routing.len());
        let mut r_filtered = Vec::with_capacity(routing.len());
        for r in routing {
            r_src.push(r.source_id);
            r_mid.push(r.message_id);
            r_job.push(r.job_id);
            // text[] cannot nest in unnest; carry the routed list as JSON.
            r_routed.push(serde_json::Value::from(r.routed));
            r_filtered.push(without_nul(r.filtered));
        }
        self.timed(async {
            let mut conn = self.conn().await?;
            conn.transaction::<_, StoreError, _>(|conn| {
                async move {
                    if !dest.is_empty() {
                        diesel::sql_query(
                            "INSERT INTO rt_jobs (destination_id, ordering_key, message_id, source_id, payload) \
                             SELECT d, k, m, s, p FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                             AS u(d, k, m, s, p)",
                        )
                        .bind::<Array<Text>, _>(dest)
                        .bind::<Array<Text>, _>(keys)
                        .bind::<Array<Text>, _>(mids)
                        .bind::<Array<Text>, _>(srcs)
                        .bind::<Array<Text>, _>(payloads)
                        .execute(conn)
                        .await?;
                    }
                    if !w_dest.is_empty() {
                        diesel::sql_query(
                            "INSERT INTO wh_jobs (destination_id, source_id, event_count, payload) \
                             SELECT d, s, n, p FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[]) \
                             AS u(d, s, n, p)",
                        )
                        .bind::<Array<Text>, _>(w_dest)
                        .bind::<Array<Text>, _>(w_src)
                        .bind::<Array<diesel::sql_types::Integer>, _>(w_count)
                        .bind::<Array<Text>, _>(w_payload)
                        .execute(conn)
                        .await?;
                    }
                    if !d_dest.is_empty() {
                        // Ids come from rt_jobs' sequence: dead letters of both stages share it.
                        diesel::sql_query(
                            "INSERT INTO dlq_jobs (id, destination_id, ordering_key, message_id, source_id, payload, \
                               attempts, reason, created_at, stage) \
                             SELECT nextval('rt_jobs_id_seq'), d, k, m, s, p::json, 0, r, now(), 'transform' \
                             FROM (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
                                   WITH ORDINALITY AS u(d, k, m, s, p, r, o) ORDER BY o) x",
                        )
                        .bind::<Array<Text>, _>(d_dest)
                        .bind::<Array<Text>, _>(d_key)
                        .bind::<Array<Text>, _>(d_mid)
                        .bind::<Array<Text>, _>(d_src)
                        .bind::<Array<Text>, _>(d_payload)
                        .bind::<Array<Text>, _>(d_reason)
                        .execute(conn)
                        .await?;
                    }
                    if !r_src.is_empty() {
                        diesel::sql_query(
                            "INSERT INTO routing_log (source_id, message_id, job_id, routed, filtered) \
                             SELECT s, m, j, ARRAY(SELECT jsonb_array_elements_text(r)), f \
                             FROM unnest($1::text[], $2::text[], $3::int8[], $4::jsonb[], $5::jsonb[]) AS u(s, m, j, r, f)",
                        )
                        .bind::<Array<Text>, _>(r_src)
                        .bind::<Array<Text>, _>(r_mid)
                        .bind::<Array<BigInt>, _>(r_job)
                        .bind::<Array<Jsonb>, _>(r_routed)
                        .bind::<Array<Jsonb>, _>(r_filtered)
                        .execute(conn)
                        .await?;
                    }
                    if !replayed.is_empty() {
                        diesel::sql_query("DELETE FROM dlq_jobs WHERE id = ANY($1)")
                            .bind::<Array<BigInt>, _>(replayed)
                            .execute(conn)
                            .await?;
                    }
                    let Some(last_id) = last_id else {
                        return Ok(());
                    };
                    diesel::sql_query("DELETE FROM gw_jobs WHERE id <= $1")
                        .bind::<BigInt, _>(last_id)
                        .execute(conn)
                        .await?;
                    diesel::sql_query(
                        "INSERT INTO checkpoints (stage, partition, position, updated_at) VALUES ($1, 0, $2, now()) \
                         ON CONFLICT (stage, partition) DO UPDATE SET position = excluded.position, updated_at = now()",
                    )
                    .bind::<Text, _>(PROCESSOR_STAGE)
                    .bind::<BigInt, _>(last_id)
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

    /// Deletes routing records older than `window_secs` (up to `limit`).
    pub async fn prune_routing_log(
        &self,
        window_secs: f64,
        limit: i32,
    ) -> Result<usize, StoreError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            Ok(diesel::sql_query(
                "DELETE FROM routing_log WHERE ctid = ANY(ARRAY(SELECT ctid FROM routing_log \
                 WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2))",
            )
            .bind::<diesel::sql_types::Double, _>(window_secs)
            .bind::<diesel::sql_types::Integer, _>(limit)
            .execute(&mut conn)
            .await?)
        })
        .await
    }
}
