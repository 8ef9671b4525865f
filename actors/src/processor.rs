//! Processor: reads `gw_jobs` in id order after its checkpoint in bounded batches, explodes
//! each request into events, drops messageId duplicates (the dedup table names the job that
//! first carried each messageId), routes each event to its source's destinations (enabled,
//! `integrations`, supported types, event filtering), maps it with the destination kind, and
//! commits `rt_jobs` + `routing_log` + checkpoint + deletion of the consumed `gw_jobs` in one
//! transaction. Then it wakes the routers it fed. It never delivers anything itself.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{Map, Value};

use crate::destinations::{self, Destination, HttpSettings};
use crate::messages::{Heartbeat, HeartbeatReply, Wake};
use crate::router::RouterActor;
use crate::store::{dedup_key, RoutingRecord, RtJobInsert, Store, StoreError};
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
}

impl RoutingTable {
    /// Builds every destination of every enabled source; reports every invalid one.
    pub fn build(
        ws: &Workspace,
        http: &HttpSettings,
    ) -> Result<Self, Vec<destinations::ConfigError>> {
        let mut by_source = HashMap::new();
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
            Ok(Self { by_source })
        } else {
            Err(errors)
        }
    }

    /// Every distinct enabled destination (one router each).
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
    let mut records = Vec::new();
    let mut touched = HashSet::new();
    let (mut routed_n, mut dup_n, mut none_n) = (0u64, 0u64, 0u64);
    let empty = Vec::new();
    for (job_id, source_id, events) in parsed {
        let routes = routing.by_source.get(source_id).unwrap_or(&empty);
        let mut seen_in_job = HashSet::new();
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
    }
    let mut per_dest: HashMap<&str, u64> = HashMap::new();
    for j in &rt {
        *per_dest.entry(j.destination_id.as_str()).or_default() += 1;
    }
    for (d, n) in per_dest {
        metrics::counter!(t::PROCESSOR_JOBS_WRITTEN_TOTAL, "destination" => d.to_owned())
            .increment(n);
    }
    store.commit_processed(rt, records, last_id).await?;
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

impl Handler<Heartbeat> for Processor {
    type Result = HeartbeatReply;

    fn handle(&mut self, _msg: Heartbeat, _ctx: &mut Self::Context) -> HeartbeatReply {
        HeartbeatReply {
            actor: "processor",
            pending: usize::from(self.busy),
        }
    }
}
