//! Replays: processor-stage dead letters (a transformation or mapping failed) run through
//! their destination's current scripts again and are committed with their deletion, and
//! [`preview`], the dry run `keel replay --dry-run` shows: stored requests routed exactly as
//! the processor would, written nowhere.

use std::collections::HashSet;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::event::StoredEvent;
use super::pipeline::{map_routes, Assembled, BatchError, EventCtx, RouteGroups};
use crate::messages::ReplayTransformed;
use crate::partition::{ordering_key, partition_of};
use crate::routing::RoutingTable;
use crate::store::{ProcessedBatch, RoutingRecord, Store};

/// Dead letters replayed per call at most.
pub(super) const REPLAY_LIMIT: i64 = 10_000;

/// Runs processor-stage dead letters through their destination's current transformations
/// and mapping again; commits the new rows and deletes the replayed letters in one
/// transaction. Letters whose destination is gone stay. Returns how many were replayed.
pub(super) async fn replay_transformed(
    store: &Store,
    routing: &RoutingTable,
    partitions: u32,
    msg: ReplayTransformed,
) -> Result<(i64, HashSet<String>), BatchError> {
    let letters = store
        .transform_dead_letters(msg.destination, msg.ids, REPLAY_LIMIT)
        .await?;
    let mut ctxs: Vec<EventCtx<'_>> = Vec::new();
    let mut groups = RouteGroups::default();
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
        groups.add(route, l.source_id.as_str(), idx);
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
    let records = ctxs.into_iter().map(|ctx| RoutingRecord {
        source_id: ctx.source_id.to_owned(),
        message_id: ctx.message_id,
        job_id: ctx.job_id,
        routed: ctx.routed,
        filtered: Value::Object(ctx.filtered),
    });
    let n = replayed.len() as i64;
    let mut batch = ProcessedBatch::from_rows(rt, wh, dlq, records);
    batch.replayed = replayed;
    store.commit_processed(batch).await?;
    Ok((n, touched))
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
    let mut groups = RouteGroups::default();
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
                groups.add(route, source_id.as_str(), idx);
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
