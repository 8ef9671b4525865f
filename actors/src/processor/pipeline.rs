//! The processor's pipeline, a function of (stored requests, routing table) with the store
//! as its only effect: parse each request's events, drop duplicates, route each event
//! (enabled, `integrations`, supported types, event filters), run each route's user
//! transformations and its kind's mapping (script calls concurrently on the isolate pool),
//! assemble the rows in event order per destination, and commit them with the consumed
//! requests in one [`ProcessedBatch`].

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::event::StoredEvent;
use crate::destinations;
use crate::partition::{ordering_key, partition_of, Members};
use crate::routing::{Route, RoutingTable};
use crate::store::{
    dedup_key, Consumed, DlqInsert, ProcessedBatch, RoutingRecord, RtJobInsert, Store, StoreError,
    WhJobInsert,
};
use crate::telemetry as t;
use crate::transform::{CallError, CallItem, CallResults, ItemResult, TransformPool};

/// What one committed batch did: requests consumed, destinations fed (their routers are
/// woken).
pub(super) struct BatchResult {
    pub(super) jobs: usize,
    pub(super) touched: HashSet<String>,
}

/// A stored request as phase 1 reads it.
pub(super) struct ParsedJob<'a> {
    /// Its `gw_jobs` id.
    pub(super) id: i64,
    /// Its source.
    pub(super) source_id: &'a str,
    /// The dedup keys of its duplicates, if the gateway recorded them.
    pub(super) duplicates: Option<HashSet<uuid::Uuid>>,
    /// Its events.
    pub(super) events: Vec<StoredEvent<'a>>,
    /// The destinations it is limited to (a replayed request), if any.
    pub(super) only: Option<&'a [String]>,
}

/// The events each route takes, grouped per (source, destination) in first-seen order:
/// each group is mapped with one script call.
#[derive(Default)]
pub(super) struct RouteGroups<'a> {
    groups: Vec<RouteGroup<'a>>,
    index: HashMap<(&'a str, &'a str), usize>,
}

/// One route and the indices (in the batch) of the events it takes.
pub(super) struct RouteGroup<'a> {
    pub(super) route: &'a Route,
    pub(super) source_id: &'a str,
    pub(super) events: Vec<usize>,
}

impl<'a> RouteGroups<'a> {
    /// Adds event `idx` to `route`'s group for `source_id`.
    pub(super) fn add(&mut self, route: &'a Route, source_id: &'a str, idx: usize) {
        let groups = &mut self.groups;
        let g = *self
            .index
            .entry((source_id, route.destination.id.as_str()))
            .or_insert_with(|| {
                groups.push(RouteGroup {
                    route,
                    source_id,
                    events: Vec::new(),
                });
                groups.len() - 1
            });
        self.groups[g].events.push(idx);
    }
}

/// One event that passed dedup, with what the processor decided for it.
pub(super) struct EventCtx<'a> {
    pub(super) job_id: i64,
    pub(super) source_id: &'a str,
    pub(super) message_id: String,
    pub(super) key: String,
    /// Partition of `key`: where its delivery jobs go.
    pub(super) partition: i32,
    pub(super) event: StoredEvent<'a>,
    pub(super) routed: Vec<String>,
    pub(super) filtered: Map<String, Value>,
}

/// What one route made of its events: payloads, drops and dead letters, each with the
/// index of the event (in the batch) it came from.
#[derive(Default)]
pub(super) struct RouteOutput {
    pub(super) payloads: Vec<(usize, String)>,
    pub(super) dropped: Vec<(usize, String)>,
    pub(super) dead: Vec<(usize, Map<String, Value>, String)>,
}

/// The metadata every event of a route shares (the rest comes from each event).
pub(super) fn common_metadata(route: &Route, source_id: &str, source_name: &str) -> Value {
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
pub(super) fn item_metadata(ctx: &EventCtx<'_>) -> Value {
    serde_json::json!({ "messageId": ctx.message_id, "jobId": ctx.job_id })
}

/// Runs a route's user transformations, in order, over its events, then its kind's
/// mapping. Transformation results keep the index of the event they came from.
pub(super) async fn run_route(
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
pub(super) fn push_mapped(
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
    /// The raw backup's lines could not be compressed.
    #[error("backup lines: {0}")]
    Backup(#[from] crate::warehouse::SinkError),
}

/// Runs every route group (its scripts concurrently with the others') and assembles the
/// rows they make.
pub(super) async fn map_routes(
    routing: &RoutingTable,
    groups: &RouteGroups<'_>,
    ctxs: &mut [EventCtx<'_>],
) -> Result<Assembled, BatchError> {
    let pool = routing.pool().map(Arc::as_ref);
    let shared: &[EventCtx<'_>] = ctxs;
    let outputs = futures::future::join_all(groups.groups.iter().map(|g| {
        let source_name = routing.source_name(g.source_id);
        run_route(pool, g.route, source_name, shared, &g.events)
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    Ok(assemble(groups, outputs, ctxs))
}

/// The rows a set of route outputs makes.
pub(super) struct Assembled {
    pub(super) rt: Vec<RtJobInsert>,
    pub(super) wh: Vec<WhJobInsert>,
    pub(super) dlq: Vec<DlqInsert>,
    pub(super) touched: HashSet<String>,
}

/// Turns route outputs into `rt_jobs`, `wh_jobs` and dead-letter rows (in event order per
/// destination) and records on each event where it went.
pub(super) fn assemble(
    groups: &RouteGroups<'_>,
    outputs: Vec<RouteOutput>,
    ctxs: &mut [EventCtx<'_>],
) -> Assembled {
    let mut rt = Vec::new();
    let mut wh = Vec::new();
    let mut dlq = Vec::new();
    let mut touched = HashSet::new();
    for (
        RouteGroup {
            route, source_id, ..
        },
        output,
    ) in groups.groups.iter().zip(outputs)
    {
        let d = &route.destination;
        let warehouse = route.kind.warehouse().is_some();
        // Warehouse kinds: one wh_jobs row per request (job) and destination.
        let mut for_warehouse: Vec<(i64, Vec<String>)> = Vec::new();
        let mut any_job = false;
        for (i, payload) in output.payloads {
            let ctx = &ctxs[i];
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
                any_job = true;
            }
            // Once per event, though a split event has several payloads: only this loop
            // adds this destination to this group's events.
            let routed = &mut ctxs[i].routed;
            if routed.last() != Some(&d.id) {
                routed.push(d.id.clone());
            }
        }
        if any_job {
            touched.insert(d.id.clone());
        }
        for (_, events) in for_warehouse {
            wh.push(WhJobInsert {
                destination_id: d.id.clone(),
                source_id: (*source_id).to_owned(),
                event_count: i32::try_from(events.len()).unwrap_or(i32::MAX),
                payload: format!("[{}]", events.join(",")),
            });
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

pub(super) async fn process_batch(
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
    // The backup lines are built from the stored text here, where it is at hand, so the
    // commit writes one small gzip member per hour instead of a copy of every request.
    let packs = backup.then(|| crate::backup::pack(&jobs)).transpose()?;
    let consumed = Consumed {
        ids: jobs.iter().map(|j| j.id).collect(),
        positions: positions.into_iter().collect(),
        backup: packs,
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
                if let Some(m) = e.head.member("messageId").and_then(Value::as_str) {
                    keys.push(dedup_key(&job.source_id, m));
                }
            }
        }
        let duplicates: Option<HashSet<uuid::Uuid>> =
            job.duplicates.as_ref().map(|d| d.iter().copied().collect());
        parsed.push(ParsedJob {
            id: job.id,
            source_id: job.source_id.as_str(),
            duplicates,
            events,
            only: job.only_destinations.as_deref(),
        });
    }
    let owners = if keys.is_empty() {
        HashMap::new()
    } else {
        store.dedup_owners(keys).await?
    };
    let mut dup_n = 0u64;
    // Phase 1: dedup and filters; each route collects the indices of the events it takes.
    let mut ctxs: Vec<EventCtx<'_>> = Vec::new();
    let mut groups = RouteGroups::default();
    for ParsedJob {
        id: job_id,
        source_id,
        duplicates,
        events,
        only,
    } in parsed
    {
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
                groups.add(route, source_id, idx);
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
    let mut batch = ProcessedBatch::from_rows(rt, wh, dlq, records);
    batch.consumed = Some(consumed);
    store.commit_processed(batch).await?;
    metrics::counter!(t::PROCESSOR_EVENTS_TOTAL, "outcome" => "routed").increment(routed_n);
    metrics::counter!(t::PROCESSOR_EVENTS_TOTAL, "outcome" => "duplicate").increment(dup_n);
    metrics::counter!(t::PROCESSOR_EVENTS_TOTAL, "outcome" => "no_route").increment(none_n);
    metrics::counter!(t::PROCESSOR_DEAD_LETTERED_TOTAL).increment(dead_n);
    Ok(Some(BatchResult {
        jobs: jobs.len(),
        touched,
    }))
}
