//! Processor: reads `gw_jobs` in id order after its checkpoint in bounded batches, explodes
//! each request into events, drops messageId duplicates (the dedup table names the job that
//! first carried each messageId), routes each event to its source's destinations (enabled,
//! `integrations`, supported types, event filtering), maps it with the destination kind, and
//! commits `rt_jobs` + `wh_jobs` (one row per request and warehouse destination) +
//! `routing_log` + checkpoint + deletion of the consumed `gw_jobs` in one
//! transaction. Then it wakes the routers it fed. It never delivers anything itself.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{Map, Value};

use crate::destinations::{self, Destination, HttpSettings};
use crate::messages::{Heartbeat, HeartbeatReply, InjectPanic, UpdateRouting, Wake};
use crate::router::RouterActor;
use crate::store::{dedup_key, RoutingRecord, RtJobInsert, Store, StoreError, WhJobInsert};
use crate::telemetry as t;
use crate::workspace::{self, Workspace};

/// One destination of a source, with its kind.
#[derive(Clone)]
pub struct Route {
    /// The destination as configured.
    pub destination: workspace::Destination,
    /// Its kind.
    pub kind: Arc<dyn Destination>,
}

/// Source id → its routes; built once from the workspace.
#[derive(Clone, Default)]
pub struct RoutingTable {
    by_source: HashMap<String, Vec<Route>>,
    source_names: HashMap<String, String>,
}

impl RoutingTable {
    /// Builds every destination of every enabled source; reports every invalid one.
    pub fn build(
        ws: &Workspace,
        http: &HttpSettings,
    ) -> Result<Self, Vec<destinations::ConfigError>> {
        let mut by_source = HashMap::new();
        let source_names = ws
            .sources
            .iter()
            .map(|s| (s.id.clone(), s.name.clone()))
            .collect();
        let mut built: HashMap<String, Arc<dyn Destination>> = HashMap::new();
        let mut errors = Vec::new();
        for source in &ws.sources {
            let mut routes = Vec::new();
            for d in &source.destinations {
                let kind = match built.get(&d.id) {
                    Some(k) => k.clone(),
                    None => match destinations::build(d, http) {
                        Ok(k) => {
                            built.insert(d.id.clone(), k.clone());
                            k
                        }
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    },
                };
                routes.push(Route {
                    destination: d.clone(),
                    kind,
                });
            }
            by_source.insert(source.id.clone(), routes);
        }
        if errors.is_empty() {
            Ok(Self {
                by_source,
                source_names,
            })
        } else {
            Err(errors)
        }
    }

    /// Id → name of every source whose routes include destination `id`.
    pub fn sources_of(&self, id: &str) -> HashMap<String, String> {
        self.by_source
            .iter()
            .filter(|(_, routes)| routes.iter().any(|r| r.destination.id == id))
            .map(|(s, _)| {
                (
                    s.clone(),
                    self.source_names.get(s).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Every distinct enabled destination (one router or warehouse uploader each).
    pub fn enabled_destinations(&self) -> Vec<Route> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for routes in self.by_source.values() {
            for r in routes {
                if r.destination.enabled && seen.insert(r.destination.id.clone()) {
                    out.push(r.clone());
                }
            }
        }
        out.sort_by(|a, b| a.destination.id.cmp(&b.destination.id));
        out
    }
}

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
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_jobs: 64,
            idle_poll: Duration::from_millis(20),
            routing_log_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// The processor actor (see the module comment).
pub struct Processor {
    store: Store,
    routing: Arc<RoutingTable>,
    routers: RouterRegistry,
    config: ProcessorConfig,
    checkpoint: Option<i64>,
    busy: bool,
    backoff_until: Option<Instant>,
    routing_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

struct BatchResult {
    last_id: i64,
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
            checkpoint: None,
            busy: false,
            backoff_until: None,
            routing_waiters: Vec::new(),
        }
    }

    fn cycle(&mut self, ctx: &mut Context<Self>) {
        if !self.config.enabled
            || self.busy
            || self.backoff_until.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        self.busy = true;
        let store = self.store.clone();
        let routing = self.routing.clone();
        let checkpoint = self.checkpoint;
        let limit = self.config.batch_jobs;
        let started = Instant::now();
        let fut = async move {
            let after = match checkpoint {
                Some(c) => c,
                None => store.processor_checkpoint().await?,
            };
            process_batch(&store, &routing, after, limit)
                .await
                .map(|r| (after, r))
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.busy = false;
            for w in act.routing_waiters.drain(..) {
                let _ = w.send(());
            }
            match result {
                Ok((after, None)) => act.checkpoint = Some(after),
                Ok((_, Some(batch))) => {
                    metrics::histogram!(t::PROCESSOR_BATCH_DURATION_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    act.checkpoint = Some(batch.last_id);
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
                Err(e) => {
                    metrics::counter!(t::PROCESSOR_FAILURES_TOTAL).increment(1);
                    tracing::warn!(error = %e, "processor batch failed; retrying");
                    act.checkpoint = None;
                    act.backoff_until = Some(Instant::now() + Duration::from_millis(500));
                }
            }
        }));
    }
}

fn ordering_key(event: &Map<String, Value>) -> String {
    for k in ["userId", "anonymousId"] {
        match event.get(k) {
            Some(Value::String(s)) if !s.is_empty() => return s.clone(),
            Some(Value::Number(n)) => return n.to_string(),
            _ => {}
        }
    }
    String::new()
}

/// A request's id, source and events.
type ParsedJob<'a> = (i64, &'a str, Vec<Map<String, Value>>);

async fn process_batch(
    store: &Store,
    routing: &RoutingTable,
    after: i64,
    limit: i64,
) -> Result<Option<BatchResult>, StoreError> {
    let jobs = store.fetch_gw_jobs(after, limit).await?;
    let Some(last) = jobs.last() else {
        return Ok(None);
    };
    let last_id = last.id;
    let mut parsed: Vec<ParsedJob<'_>> = Vec::with_capacity(jobs.len());
    let mut keys = Vec::new();
    for job in &jobs {
        let events: Vec<Map<String, Value>> = serde_json::from_str(&job.payload).unwrap_or_else(|e| {
            // Only the gateway writes gw_jobs, so this means a corrupted row; never panic.
            tracing::error!(job = job.id, error = %e, "gw_jobs payload is not an event array; skipped");
            Vec::new()
        });
        for e in &events {
            if let Some(m) = e.get("messageId").and_then(Value::as_str) {
                keys.push(dedup_key(&job.source_id, m));
            }
        }
        parsed.push((job.id, job.source_id.as_str(), events));
    }
    let owners = store.dedup_owners(keys).await?;
    let mut rt = Vec::new();
    let mut wh = Vec::new();
    let mut records = Vec::new();
    let mut touched = HashSet::new();
    let (mut routed_n, mut dup_n, mut none_n) = (0u64, 0u64, 0u64);
    let empty = Vec::new();
    for (job_id, source_id, events) in parsed {
        let routes = routing.by_source.get(source_id).unwrap_or(&empty);
        let mut seen_in_job = HashSet::new();
        // Warehouse destination id → this request's events for it (one wh_jobs row each).
        let mut for_warehouse: Vec<(&str, Vec<Value>)> = Vec::new();
        for event in events {
            let message_id = event
                .get("messageId")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let owner = owners.get(&dedup_key(source_id, &message_id));
            if owner.is_some_and(|o| *o != job_id) || !seen_in_job.insert(message_id.clone()) {
                dup_n += 1;
                continue;
            }
            let key = ordering_key(&event);
            let mut routed = Vec::new();
            let mut filtered = Map::new();
            for route in routes {
                let d = &route.destination;
                if let Err(reason) = d.accepts(&event) {
                    metrics::counter!(t::PROCESSOR_FILTERED_TOTAL, "destination" => d.id.clone(), "outcome" => reason.as_str())
                        .increment(1);
                    filtered.insert(d.id.clone(), Value::String(reason.as_str().into()));
                    continue;
                }
                match route.kind.transform(&event) {
                    Ok(payloads) if payloads.is_empty() => {
                        // The kind sends nothing for this event (e.g. REDIS hash mode and a
                        // track): say so instead of counting it as routed.
                        filtered.insert(
                            d.id.clone(),
                            Value::String(format!(
                                "{} sends nothing for this event",
                                route.kind.kind()
                            )),
                        );
                    }
                    Ok(payloads) if route.kind.warehouse().is_some() => {
                        match for_warehouse.iter_mut().find(|(id, _)| *id == d.id) {
                            Some((_, list)) => list.extend(payloads),
                            None => for_warehouse.push((d.id.as_str(), payloads)),
                        }
                        routed.push(d.id.clone());
                    }
                    Ok(payloads) => {
                        for p in payloads {
                            rt.push(RtJobInsert {
                                destination_id: d.id.clone(),
                                ordering_key: key.clone(),
                                message_id: message_id.clone(),
                                source_id: source_id.to_owned(),
                                payload: p.to_string(),
                            });
                        }
                        routed.push(d.id.clone());
                        touched.insert(d.id.clone());
                    }
                    Err(e) => {
                        filtered.insert(
                            d.id.clone(),
                            Value::String(format!("transform failed: {e}")),
                        );
                    }
                }
            }
            if routed.is_empty() {
                none_n += 1;
            } else {
                routed_n += 1;
            }
            records.push(RoutingRecord {
                source_id: source_id.to_owned(),
                message_id,
                job_id,
                routed,
                filtered: Value::Object(filtered),
            });
        }
        for (destination_id, events) in for_warehouse {
            wh.push(WhJobInsert {
                destination_id: destination_id.to_owned(),
                source_id: source_id.to_owned(),
                event_count: i32::try_from(events.len()).unwrap_or(i32::MAX),
                payload: Value::Array(events).to_string(),
            });
        }
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
    store.commit_processed(rt, wh, records, last_id).await?;
    metrics::counter!(t::PROCESSOR_EVENTS_TOTAL, "outcome" => "routed").increment(routed_n);
    metrics::counter!(t::PROCESSOR_EVENTS_TOTAL, "outcome" => "duplicate").increment(dup_n);
    metrics::counter!(t::PROCESSOR_EVENTS_TOTAL, "outcome" => "no_route").increment(none_n);
    Ok(Some(BatchResult {
        last_id,
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
        self.checkpoint = None;
    }
}

impl Handler<UpdateRouting> for Processor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: UpdateRouting, _ctx: &mut Self::Context) -> Self::Result {
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
