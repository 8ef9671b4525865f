//! Processor: reads the unconsumed `gw_jobs` of the partitions this node holds, in id order
//! and bounded batches, explodes
//! each request into events, drops messageId duplicates (the gateway listed them in the row;
//! older rows are looked up in the dedup table), routes each event to its source's destinations (enabled,
//! `integrations`, supported types, event filtering), maps it with the destination kind, and
//! commits `rt_jobs` + `wh_jobs` (one row per request and warehouse destination) +
//! `routing_log` + checkpoints + deletion of the consumed `gw_jobs` in one transaction,
//! fenced on this node's leases (a batch whose partitions moved to another node is rolled
//! back and left to it). Then it wakes the routers it fed. It never delivers anything itself.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::destinations;
use crate::messages::{
    Heartbeat, HeartbeatReply, InjectPanic, ReplayTransformed, SetPartitions, UpdateRouting, Wake,
};
use crate::partition::{ordering_key, partition_of};
use crate::router::RouterActor;
use crate::routing::{Route, RoutingTable};
use crate::store::{
    dedup_key, Consumed, DlqInsert, RoutingRecord, RtJobInsert, Store, StoreError, WhJobInsert,
};
use crate::telemetry as t;
use crate::transform::{CallError, CallItem, CallResults, ItemResult, TransformPool};

mod event;

use event::StoredEvent;

/// Addresses of the running routers, by destination id.
pub type RouterRegistry = Arc<RwLock<HashMap<String, Addr<RouterActor>>>>;

/// Processor tuning.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// False on a gateway-only node: the actor runs but reads nothing.
    pub enabled: bool,
    /// Requests (`gw_jobs` rows) per batch at most.
    pub batch_jobs: i64,
    /// How often an idle processor looks for new requests.
    pub idle_poll: Duration,
    /// How long routing records are kept for the explain endpoint.
    pub routing_log_window: Duration,
    /// Partition count (`[cluster] partitions`): the partition of each delivery job.
    pub partitions: u32,
    /// Raw backup enabled (`[backup]`): consumed requests move to `backup_jobs`.
    pub backup: bool,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_jobs: 256,
            idle_poll: Duration::from_millis(20),
            routing_log_window: Duration::from_secs(24 * 3600),
            partitions: 16,
            backup: false,
        }
    }
}

/// The processor actor (see the module comment).
pub struct Processor {
    store: Store,
    routing: Arc<RoutingTable>,
    routers: RouterRegistry,
    config: ProcessorConfig,
    /// The partitions this node holds (none until the lease keeper assigns some).
    partitions: Arc<[i32]>,
    busy: bool,
    backoff_until: Option<Instant>,
    routing_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

struct BatchResult {
    jobs: usize,
    touched: HashSet<String>,
}

impl Processor {
    /// Creates a processor.
    pub fn new(
        store: Store,
        routing: Arc<RoutingTable>,
        routers: RouterRegistry,
        config: ProcessorConfig,
    ) -> Self {
        Self {
            store,
            routing,
            routers,
            config,
            partitions: Arc::from(Vec::new()),
            busy: false,
            backoff_until: None,
            routing_waiters: Vec::new(),
        }
    }

    fn cycle(&mut self, ctx: &mut Context<Self>) {
        if !self.config.enabled
            || self.partitions.is_empty()
            || self.busy
            || self.backoff_until.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        self.busy = true;
        let store = self.store.clone();
        let routing = self.routing.clone();
        let partitions = self.partitions.clone();
        let limit = self.config.batch_jobs;
        let count = self.config.partitions;
        let backup = self.config.backup;
        let started = Instant::now();
        let fut =
            async move { process_batch(&store, &routing, &partitions, count, limit, backup).await };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.busy = false;
            for w in act.routing_waiters.drain(..) {
                let _ = w.send(());
            }
            match result {
                Ok(None) => {}
                Ok(Some(batch)) => {
                    metrics::histogram!(t::PROCESSOR_BATCH_DURATION_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    act.backoff_until = None;
                    if let Ok(routers) = act.routers.read() {
                        for d in &batch.touched {
                            if let Some(r) = routers.get(d) {
                                // A dropped wake is harmless: routers also poll.
                                let _ = r.try_send(Wake);
                            }
                        }
                    }
                    if batch.jobs as i64 >= act.config.batch_jobs {
                        act.cycle(ctx);
                    }
                }
                Err(BatchError::Store(StoreError::Fenced(why))) => {
                    // Another node took these partitions: its processor does this work.
                    metrics::counter!(t::PROCESSOR_FAILURES_TOTAL).increment(1);
                    tracing::info!(%why, "processor batch fenced off; rolled back");
                    // Until the lease keeper notices and reassigns, do not spin on it.
                    act.backoff_until = Some(Instant::now() + Duration::from_millis(500));
                }
                Err(e) => {
                    metrics::counter!(t::PROCESSOR_FAILURES_TOTAL).increment(1);
                    tracing::warn!(error = %e, "processor batch failed; retrying");
                    act.backoff_until = Some(Instant::now() + Duration::from_millis(500));
                }
            }
        }));
    }
}

/// A request's id, source, the dedup keys of its duplicates (if the gateway recorded them)
/// and its events.
type ParsedJob<'a> = (
    i64,
    &'a str,
    Option<HashSet<uuid::Uuid>>,
    Vec<StoredEvent<'a>>,
    Option<&'a [String]>,
);

/// One event that passed dedup, with what the processor decided for it.
struct EventCtx<'a> {
    job_id: i64,
    source_id: &'a str,
    message_id: String,
    key: String,
    /// Partition of `key`: where its delivery jobs go.
    partition: i32,
    event: StoredEvent<'a>,
    routed: Vec<String>,
    filtered: Map<String, Value>,
}

/// What one route made of its events: payloads, drops and dead letters, each with the
/// index of the event (in the batch) it came from.
#[derive(Default)]
struct RouteOutput {
    payloads: Vec<(usize, String)>,
    dropped: Vec<(usize, String)>,
    dead: Vec<(usize, Map<String, Value>, String)>,
}

/// The metadata every event of a route shares (the rest comes from each event).
fn common_metadata(route: &Route, source_id: &str, source_name: &str) -> Value {
    let d = &route.destination;
    serde_json::json!({
        "sourceId": source_id,
        "sourceName": source_name,
        "destinationId": d.id,
        "destinationName": d.name,
        "destinationType": d.destination_definition.name,
    })
}

/// One event's own metadata members: its original messageId and its request's job id.
fn item_metadata(ctx: &EventCtx<'_>) -> Value {
    serde_json::json!({ "messageId": ctx.message_id, "jobId": ctx.job_id })
}

/// Runs a route's user transformations, in order, over its events, then its kind's
/// mapping. Transformation results keep the index of the event they came from.
async fn run_route(
    pool: Option<&TransformPool>,
    route: &Route,
    source_name: &str,
    ctxs: &[EventCtx<'_>],
    indices: &[usize],
) -> Result<RouteOutput, BatchError> {
    let mut out = RouteOutput::default();
    if route.transformations.is_empty() {
        if let Some(&first) = indices.first() {
            if let Some(r) = route.kind.transform_raw(ctxs[first].event.raw) {
                // The kind maps the stored text: no event is parsed.
                let mut first = Some(r);
                for &i in indices {
                    let r = first.take().unwrap_or_else(|| {
                        route
                            .kind
                            .transform_raw(ctxs[i].event.raw)
                            .unwrap_or_else(|| route.kind.transform_text(ctxs[i].event.event()))
                    });
                    push_mapped(&mut out, route, i, r, || ctxs[i].event.event().clone());
                }
                return Ok(out);
            }
        }
    }
    // Events are borrowed from the batch until a transformation hands back new ones.
    let mut current: Vec<(usize, Cow<'_, Map<String, Value>>)> = indices
        .iter()
        .map(|&i| (i, Cow::Borrowed(ctxs[i].event.event())))
        .collect();
    let source_id = indices.first().map_or("", |&i| ctxs[i].source_id);
    let common = common_metadata(route, source_id, source_name);
    for script in &route.transformations {
        if current.is_empty() {
            break;
        }
        let name = script.name.as_str();
        let Some(pool) = pool else {
            for (i, e) in current.drain(..) {
                out.dead.push((
                    i,
                    e.into_owned(),
                    format!("transformation {name}: no JavaScript pool"),
                ));
            }
            break;
        };
        let metas: Vec<Value> = current
            .iter()
            .map(|(i, _)| item_metadata(&ctxs[*i]))
            .collect();
        let items: Vec<CallItem<'_>> = current
            .iter()
            .zip(&metas)
            .map(|((_, event), metadata)| CallItem {
                event: event.as_ref(),
                metadata,
            })
            .collect();
        let result = pool.call(script, &common, &items, None).await;
        drop(items);
        if let Err(CallError::Unavailable) = result {
            // Not the script's fault: retry the batch rather than dead-letter its events.
            return Err(BatchError::Scripts(format!(
                "transformation {name}: the JavaScript pool is unavailable"
            )));
        }
        let before = std::mem::take(&mut current);
        let (mut n_out, mut n_filtered, mut n_error) = (0u64, 0u64, 0u64);
        match result {
            Err(e) => {
                n_error = before.len() as u64;
                for (i, ev) in before {
                    out.dead.push((
                        i,
                        ev.into_owned(),
                        format!("transformation {name} failed: {e}"),
                    ));
                }
            }
            Ok(output) => match output.results {
                CallResults::PerEvent(results) => {
                    for ((i, ev), r) in before.into_iter().zip(results) {
                        match r {
                            ItemResult::Out(evs) if evs.is_empty() => {
                                n_filtered += 1;
                                out.dropped
                                    .push((i, format!("dropped by transformation {name}")));
                            }
                            ItemResult::Out(evs) => {
                                n_out += evs.len() as u64;
                                current.extend(evs.into_iter().map(|e| (i, Cow::Owned(e))));
                            }
                            ItemResult::Failed(e) => {
                                n_error += 1;
                                metrics::counter!(t::TRANSFORM_ERRORS_TOTAL, "script" => name.to_owned(), "reason" => "exception")
                                    .increment(1);
                                out.dead.push((
                                    i,
                                    ev.into_owned(),
                                    format!("transformation {name} threw: {e}"),
                                ));
                            }
                        }
                    }
                }
                CallResults::Batch(evs) => {
                    // Outputs map back to inputs by messageId; others to the first input.
                    let by_id: HashMap<&str, usize> = before
                        .iter()
                        .map(|(i, _)| (ctxs[*i].message_id.as_str(), *i))
                        .collect();
                    let mut kept = HashSet::new();
                    let first = before.first().map_or(0, |(i, _)| *i);
                    for e in evs {
                        let i = e
                            .get("messageId")
                            .and_then(Value::as_str)
                            .and_then(|m| by_id.get(m).copied())
                            .unwrap_or(first);
                        kept.insert(i);
                        n_out += 1;
                        current.push((i, Cow::Owned(e)));
                    }
                    for (i, _) in before.iter().filter(|(i, _)| !kept.contains(i)) {
                        n_filtered += 1;
                        out.dropped
                            .push((*i, format!("dropped by transformation {name}")));
                    }
                }
            },
        }
        metrics::counter!(t::TRANSFORM_EVENTS_OUT_TOTAL, "script" => name.to_owned())
            .increment(n_out);
        metrics::counter!(t::TRANSFORM_EVENTS_DROPPED_TOTAL, "script" => name.to_owned(), "reason" => "filtered")
            .increment(n_filtered);
        metrics::counter!(t::TRANSFORM_EVENTS_DROPPED_TOTAL, "script" => name.to_owned(), "reason" => "error")
            .increment(n_error);
    }
    if current.is_empty() {
        return Ok(out);
    }
    let events: Vec<&Map<String, Value>> = current.iter().map(|(_, e)| e.as_ref()).collect();
    let mapped = route.kind.transform_batch(&events).await;
    drop(events);
    for ((i, event), r) in current.into_iter().zip(mapped) {
        push_mapped(&mut out, route, i, r, || event.into_owned());
    }
    Ok(out)
}

/// Records what the kind made of event `i`: payloads, a drop (nothing to send) or a dead
/// letter (`event` gives the event it keeps).
fn push_mapped(
    out: &mut RouteOutput,
    route: &Route,
    i: usize,
    mapped: Result<Vec<String>, destinations::TransformError>,
    event: impl FnOnce() -> Map<String, Value>,
) {
    match mapped {
        Ok(payloads) if payloads.is_empty() => {
            // The kind sends nothing for this event (e.g. REDIS hash mode and a track).
            out.dropped.push((
                i,
                format!("{} sends nothing for this event", route.kind.kind()),
            ));
        }
        Ok(payloads) => out.payloads.extend(payloads.into_iter().map(|p| (i, p))),
        Err(destinations::TransformError::Unsupported(reason)) => out.dropped.push((i, reason)),
        Err(e) => out.dead.push((i, event(), format!("mapping failed: {e}"))),
    }
}

/// Why a processor batch (or a replay) failed; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Postgres.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The script pool could not run a transformation.
    #[error("{0}")]
    Scripts(String),
}

/// Runs every route group (its scripts concurrently with the others') and assembles the
/// rows they make.
async fn map_routes(
    routing: &RoutingTable,
    groups: &[(&Route, &str, Vec<usize>)],
    ctxs: &mut [EventCtx<'_>],
) -> Result<Assembled, BatchError> {
    let pool = routing.pool().map(Arc::as_ref);
    let shared: &[EventCtx<'_>] = ctxs;
    let outputs = futures::future::join_all(groups.iter().map(|(route, source_id, idx)| {
        let source_name = routing.source_name(source_id);
        run_route(pool, route, source_name, shared, idx)
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    Ok(assemble(groups, outputs, ctxs))
}

/// The rows a set of route outputs makes.
struct Assembled {
    rt: Vec<RtJobInsert>,
    wh: Vec<WhJobInsert>,
    dlq: Vec<DlqInsert>,
    touched: HashSet<String>,
}

/// Turns route outputs into `rt_jobs`, `wh_jobs` and dead-letter rows (in event order per
/// destination) and records on each event where it went.
fn assemble(
    groups: &[(&Route, &str, Vec<usize>)],
    outputs: Vec<RouteOutput>,
    ctxs: &mut [EventCtx<'_>],
) -> Assembled {
    let mut rt = Vec::new();
    let mut wh = Vec::new();
    let mut dlq = Vec::new();
    let mut touched = HashSet::new();
    for ((route, source_id, _), output) in groups.iter().zip(outputs) {
        let d = &route.destination;
        let warehouse = route.kind.warehouse().is_some();
        // Warehouse kinds: one wh_jobs row per request (job) and destination.
        let mut for_warehouse: Vec<(i64, Vec<String>)> = Vec::new();
        let mut routed_idx = HashSet::new();
        for (i, payload) in output.payloads {
            let ctx = &ctxs[i];
            routed_idx.insert(i);
            if warehouse {
                match for_warehouse.last_mut() {
                    Some((job, list)) if *job == ctx.job_id => list.push(payload),
                    _ => for_warehouse.push((ctx.job_id, vec![payload])),
                }
            } else {
                rt.push(RtJobInsert {
                    destination_id: d.id.clone(),
                    ordering_key: ctx.key.clone(),
                    message_id: ctx.message_id.clone(),
                    source_id: (*source_id).to_owned(),
                    payload,
                    partition: ctx.partition,
                });
                touched.insert(d.id.clone());
            }
        }
        for (_, events) in for_warehouse {
            wh.push(WhJobInsert {
                destination_id: d.id.clone(),
                source_id: (*source_id).to_owned(),
                event_count: i32::try_from(events.len()).unwrap_or(i32::MAX),
                payload: format!("[{}]", events.join(",")),
            });
        }
        for i in routed_idx {
            ctxs[i].routed.push(d.id.clone());
        }
        for (i, reason) in output.dropped {
            if !ctxs[i].routed.contains(&d.id) {
                ctxs[i].filtered.insert(d.id.clone(), Value::String(reason));
            }
        }
        for (i, event, reason) in output.dead {
            let ctx = &mut ctxs[i];
            tracing::warn!(destination = %d.id, message_id = %ctx.message_id, reason = %route.secrets.text(&reason), "event dead-lettered before delivery");
            ctx.filtered.insert(
                d.id.clone(),
                Value::String(format!("dead-lettered: {reason}")),
            );
            dlq.push(DlqInsert {
                destination_id: d.id.clone(),
                ordering_key: ctx.key.clone(),
                message_id: ctx.message_id.clone(),
                source_id: (*source_id).to_owned(),
                payload: Value::Object(event).to_string(),
                reason,
                partition: ctx.partition,
            });
        }
    }
    Assembled {
        rt,
        wh,
        dlq,
        touched,
    }
}

/// Dead letters replayed per call at most.
const REPLAY_LIMIT: i64 = 10_000;

/// Runs processor-stage dead letters through their destination's current transformations
/// and mapping again; commits the new rows and deletes the replayed letters in one
/// transaction. Letters whose destination is gone stay. Returns how many were replayed.
async fn replay_transformed(
    store: &Store,
    routing: &RoutingTable,
    partitions: u32,
    msg: ReplayTransformed,
) -> Result<(i64, HashSet<String>), BatchError> {
    let letters = store
        .transform_dead_letters(msg.destination, msg.ids, REPLAY_LIMIT)
        .await?;
    let mut ctxs: Vec<EventCtx<'_>> = Vec::new();
    let mut groups: Vec<(&Route, &str, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<(&str, &str), usize> = HashMap::new();
    let mut replayed = Vec::new();
    for l in &letters {
        let routes = routing.routes_of(&l.source_id);
        let Some(route) = routes.iter().find(|r| r.destination.id == l.destination_id) else {
            continue;
        };
        let Some(event) = serde_json::from_str::<&RawValue>(&l.payload)
            .ok()
            .and_then(|raw| StoredEvent::parse(raw).ok())
        else {
            continue;
        };
        let idx = ctxs.len();
        let g = *group_of
            .entry((l.source_id.as_str(), l.destination_id.as_str()))
            .or_insert_with(|| {
                groups.push((route, l.source_id.as_str(), Vec::new()));
                groups.len() - 1
            });
        groups[g].2.push(idx);
        replayed.push(l.id);
        ctxs.push(EventCtx {
            job_id: 0,
            source_id: l.source_id.as_str(),
            message_id: l.message_id.clone(),
            key: l.ordering_key.clone(),
            partition: partition_of(&l.ordering_key, partitions),
            event,
            routed: Vec::new(),
            filtered: Map::new(),
        });
    }
    let Assembled {
        rt,
        wh,
        dlq,
        touched,
    } = map_routes(routing, &groups, &mut ctxs).await?;
    let records = ctxs
        .into_iter()
        .map(|ctx| RoutingRecord {
            source_id: ctx.source_id.to_owned(),
            message_id: ctx.message_id,
            job_id: ctx.job_id,
            routed: ctx.routed,
            filtered: Value::Object(ctx.filtered),
        })
        .collect();
    let n = replayed.len() as i64;
    store
        .commit_processed(rt, wh, dlq, records, None, replayed)
        .await?;
    Ok((n, touched))
}

async fn process_batch(
    store: &Store,
    routing: &RoutingTable,
    partitions: &[i32],
    partition_count: u32,
    limit: i64,
    backup: bool,
) -> Result<Option<BatchResult>, BatchError> {
    let jobs = store.fetch_gw_jobs(partitions, limit).await?;
    if jobs.is_empty() {
        return Ok(None);
    }
    let mut positions: HashMap<i32, i64> = HashMap::new();
    for j in &jobs {
        let p = positions.entry(j.partition).or_default();
        *p = (*p).max(j.id);
    }
    let consumed = Consumed {
        ids: jobs.iter().map(|j| j.id).collect(),
        positions: positions.into_iter().collect(),
        backup,
    };
    let mut parsed: Vec<ParsedJob<'_>> = Vec::with_capacity(jobs.len());
    // Rows stored before the gateway recorded duplicates: their events' dedup owners.
    let mut keys = Vec::new();
    for job in &jobs {
        let events: Vec<StoredEvent<'_>> = serde_json::from_str::<Vec<&RawValue>>(&job.payload)
            .and_then(|raws| raws.into_iter().map(StoredEvent::parse).collect())
            .unwrap_or_else(|e| {
                // Only the gateway writes gw_jobs, so this means a corrupted row; never panic.
                tracing::error!(job = job.id, error = %e, "gw_jobs payload is not an event array; skipped");
                Vec::new()
            });
        if job.duplicates.is_none() {
            for e in &events {
                if let Some(m) = e.head.get("messageId").and_then(Value::as_str) {
                    keys.push(dedup_key(&job.source_id, m));
                }
            }
        }
        let duplicates: Option<HashSet<uuid::Uuid>> =
            job.duplicates.as_ref().map(|d| d.iter().copied().collect());
        parsed.push((
            job.id,
            job.source_id.as_str(),
            duplicates,
            events,
            job.only_destinations.as_deref(),
        ));
    }
    let owners = if keys.is_empty() {
        HashMap::new()
    } else {
        store.dedup_owners(keys).await?
    };
    let mut dup_n = 0u64;
    // Phase 1: dedup and filters; each route collects the indices of the events it takes.
    let mut ctxs: Vec<EventCtx<'_>> = Vec::new();
    let mut groups: Vec<(&Route, &str, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<(&str, &str), usize> = HashMap::new();
    for (job_id, source_id, duplicates, events, only) in parsed {
        let routes = routing.routes_of(source_id);
        let mut seen_in_job = HashSet::new();
        for event in events {
            let message_id = event.message_id().to_owned();
            let duplicate = match &duplicates {
                Some(d) => !d.is_empty() && d.contains(&dedup_key(source_id, &message_id)),
                None => owners
                    .get(&dedup_key(source_id, &message_id))
                    .is_some_and(|o| *o != job_id),
            };
            if duplicate || !seen_in_job.insert(message_id.clone()) {
                dup_n += 1;
                continue;
            }
            let idx = ctxs.len();
            let mut filtered = Map::new();
            for route in routes {
                let d = &route.destination;
                if only.is_some_and(|o| !o.contains(&d.id)) {
                    filtered.insert(
                        d.id.clone(),
                        Value::String("replay: destination not selected".into()),
                    );
                    continue;
                }
                if let Err(reason) = d.accepts(&event.head) {
                    metrics::counter!(t::PROCESSOR_FILTERED_TOTAL, "destination" => d.id.clone(), "outcome" => reason.as_str())
                        .increment(1);
                    filtered.insert(d.id.clone(), Value::String(reason.as_str().into()));
                    continue;
                }
                let g = *group_of
                    .entry((source_id, d.id.as_str()))
                    .or_insert_with(|| {
                        groups.push((route, source_id, Vec::new()));
                        groups.len() - 1
                    });
                groups[g].2.push(idx);
            }
            let key = ordering_key(&event.head);
            ctxs.push(EventCtx {
                job_id,
                source_id,
                partition: partition_of(&key, partition_count),
                key,
                message_id,
                event,
                routed: Vec::new(),
                filtered,
            });
        }
    }
    // Phases 2 and 3: every route maps its events (script calls run concurrently), then
    // the rows, in event order per destination.
    let Assembled {
        rt,
        wh,
        dlq,
        touched,
    } = map_routes(routing, &groups, &mut ctxs).await?;
    let (mut routed_n, mut none_n) = (0u64, 0u64);
    let mut records = Vec::with_capacity(ctxs.len());
    for ctx in ctxs {
        if ctx.routed.is_empty() {
            none_n += 1;
        } else {
            routed_n += 1;
        }
        records.push(RoutingRecord {
            source_id: ctx.source_id.to_owned(),
            message_id: ctx.message_id,
            job_id: ctx.job_id,
            routed: ctx.routed,
            filtered: Value::Object(ctx.filtered),
        });
    }
    let mut per_dest: HashMap<&str, u64> = HashMap::new();
    for j in &rt {
        *per_dest.entry(j.destination_id.as_str()).or_default() += 1;
    }
    for w in &wh {
        *per_dest.entry(w.destination_id.as_str()).or_default() +=
            u64::try_from(w.event_count).unwrap_or(0);
    }
    for (d, n) in per_dest {
        metrics::counter!(t::PROCESSOR_JOBS_WRITTEN_TOTAL, "destination" => d.to_owned())
            .increment(n);
    }
    let dead_n = dlq.len() as u64;
    store
        .commit_processed(rt, wh, dlq, records, Some(consumed), Vec::new())
        .await?;
    metrics::counter!(t::PROCESSOR_EVENTS_TOTAL, "outcome" => "routed").increment(routed_n);
    metrics::counter!(t::PROCESSOR_EVENTS_TOTAL, "outcome" => "duplicate").increment(dup_n);
    metrics::counter!(t::PROCESSOR_EVENTS_TOTAL, "outcome" => "no_route").increment(none_n);
    metrics::counter!(t::PROCESSOR_DEAD_LETTERED_TOTAL).increment(dead_n);
    Ok(Some(BatchResult {
        jobs: jobs.len(),
        touched,
    }))
}

impl Actor for Processor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.idle_poll, |act, ctx| act.cycle(ctx));
        let window = self.config.routing_log_window.as_secs_f64();
        ctx.run_interval(Duration::from_secs(60), move |act, ctx| {
            let store = act.store.clone();
            ctx.spawn(
                async move {
                    if let Err(e) = store.prune_routing_log(window, 10_000).await {
                        tracing::warn!(error = %e, "routing log pruning failed");
                    }
                }
                .into_actor(act),
            );
        });
    }
}

impl Supervised for Processor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => "processor").increment(1);
        self.busy = false;
    }
}

impl Handler<SetPartitions> for Processor {
    type Result = ();

    fn handle(&mut self, msg: SetPartitions, ctx: &mut Self::Context) {
        // A batch under way finishes with the old set; its commit is fenced on the leases.
        self.partitions = msg.0;
        self.cycle(ctx);
    }
}

impl Handler<UpdateRouting<RoutingTable>> for Processor {
    type Result = ResponseFuture<()>;

    fn handle(
        &mut self,
        msg: UpdateRouting<RoutingTable>,
        _ctx: &mut Self::Context,
    ) -> Self::Result {
        self.routing = msg.0;
        // A batch under way keeps the table it started with; answer once it is done, so
        // every batch started after the answer routes with the new table.
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.busy {
            self.routing_waiters.push(tx);
        } else {
            let _ = tx.send(());
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<InjectPanic> for Processor {
    type Result = ();

    fn handle(&mut self, _msg: InjectPanic, _ctx: &mut Self::Context) {
        panic!("injected panic (test hook)");
    }
}

impl Handler<Heartbeat> for Processor {
    type Result = HeartbeatReply;

    fn handle(&mut self, _msg: Heartbeat, _ctx: &mut Self::Context) -> HeartbeatReply {
        HeartbeatReply {
            actor: "processor",
            pending: usize::from(self.busy),
        }
    }
}

impl Handler<ReplayTransformed> for Processor {
    type Result = ResponseActFuture<Self, Result<i64, String>>;

    fn handle(&mut self, msg: ReplayTransformed, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let routing = self.routing.clone();
        let partitions = self.config.partitions;
        Box::pin(
            async move { replay_transformed(&store, &routing, partitions, msg).await }
                .into_actor(self)
                .map(|result, act, _ctx| match result {
                    Ok((n, touched)) => {
                        if let Ok(routers) = act.routers.read() {
                            for d in &touched {
                                if let Some(r) = routers.get(d) {
                                    let _ = r.try_send(Wake);
                                }
                            }
                        }
                        Ok(n)
                    }
                    Err(e) => Err(e.to_string()),
                }),
        )
    }
}

/// What one destination would receive from a set of stored requests (a dry run).
#[derive(Debug, Clone, Default)]
pub struct PreviewRoute {
    /// Destination id.
    pub destination: String,
    /// Its kind.
    pub kind: String,
    /// Payloads, in delivery order: the `rt_jobs` payload, or for warehouse kinds the event.
    pub payloads: Vec<String>,
    /// Events a transformation or mapping dead-lettered, with the reason.
    pub dead: Vec<String>,
    /// Events not routed to it, by reason.
    pub filtered: std::collections::BTreeMap<String, u64>,
}

/// Routes stored requests (`(source id, events as stored)`, in order) with `routing` exactly
/// as the processor would — filters, user transformations, the kind's mapping — without
/// deduplication and without writing anything; `only` restricts the destinations (as
/// `keel replay --destination` does). Answers per destination, by destination id.
pub async fn preview(
    routing: &RoutingTable,
    requests: &[(String, Vec<Box<RawValue>>)],
    only: Option<&[String]>,
) -> Result<std::collections::BTreeMap<String, PreviewRoute>, String> {
    let mut out: std::collections::BTreeMap<String, PreviewRoute> = Default::default();
    let mut ctxs: Vec<EventCtx<'_>> = Vec::new();
    let mut groups: Vec<(&Route, &str, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, (source_id, events)) in requests.iter().enumerate() {
        let routes = routing.routes_of(source_id);
        for raw in events {
            let event = StoredEvent::parse(raw).map_err(|e| format!("request {i}: {e}"))?;
            let idx = ctxs.len();
            for route in routes {
                let d = &route.destination;
                let entry = out.entry(d.id.clone()).or_insert_with(|| PreviewRoute {
                    destination: d.id.clone(),
                    kind: d.destination_definition.name.clone(),
                    ..PreviewRoute::default()
                });
                if only.is_some_and(|o| !o.contains(&d.id)) {
                    continue;
                }
                if let Err(reason) = d.accepts(&event.head) {
                    *entry
                        .filtered
                        .entry(reason.as_str().to_owned())
                        .or_default() += 1;
                    continue;
                }
                let g = *group_of
                    .entry((source_id.as_str(), d.id.as_str()))
                    .or_insert_with(|| {
                        groups.push((route, source_id.as_str(), Vec::new()));
                        groups.len() - 1
                    });
                groups[g].2.push(idx);
            }
            let key = ordering_key(&event.head);
            ctxs.push(EventCtx {
                job_id: i as i64 + 1,
                source_id: source_id.as_str(),
                partition: 0,
                key,
                message_id: event.message_id().to_owned(),
                event,
                routed: Vec::new(),
                filtered: Map::new(),
            });
        }
    }
    if let Some(o) = only {
        out.retain(|id, _| o.contains(id));
    }
    let assembled = map_routes(routing, &groups, &mut ctxs)
        .await
        .map_err(|e| e.to_string())?;
    for j in assembled.rt {
        if let Some(p) = out.get_mut(&j.destination_id) {
            p.payloads.push(j.payload);
        }
    }
    for w in assembled.wh {
        if let Some(p) = out.get_mut(&w.destination_id) {
            let events: Vec<&RawValue> = serde_json::from_str(&w.payload).unwrap_or_default();
            p.payloads
                .extend(events.into_iter().map(|e| e.get().to_owned()));
        }
    }
    for d in assembled.dlq {
        if let Some(p) = out.get_mut(&d.destination_id) {
            p.dead.push(format!("{}: {}", d.message_id, d.reason));
        }
    }
    for ctx in &ctxs {
        for (dest, reason) in &ctx.filtered {
            if let Some(p) = out.get_mut(dest) {
                let r = reason.as_str().unwrap_or("filtered").to_owned();
                *p.filtered.entry(r).or_default() += 1;
            }
        }
    }
    Ok(out)
}
