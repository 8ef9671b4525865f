//! The supervision tree: Root → {GatewayWriter, Processor, LeaseKeeper, TelemetrySampler,
//! Router×N, WarehouseUploader×M}.
//! Every child runs under actix's `Supervisor`, which restarts a stopped actor with the
//! same mailbox and state, so no queued message is lost; restarts are counted in
//! `keel_supervisor_restarts_total` and routers wait a capped exponential backoff before
//! resuming from Postgres. The processor and the routers run on their own threads
//! (arbiters) so routing CPU and delivery I/O never delay ingest; warehouse uploaders share
//! a third, so a slow warehouse load never delays deliveries. The root sends each
//! child a [`Heartbeat`] on an interval and counts the ones not answered in time, which
//! `/ready` reports; a child whose mailbox closed (its task ended in a panic) or that missed
//! `max_missed_heartbeats` probes in a row is replaced by a fresh one that resumes from
//! Postgres, at once the first time and after a doubling backoff if it keeps dying. [`Reconfigure`] applies a reloaded workspace: only the actors of
//! changed destinations drain (finish their in-flight work) and are replaced; [`DrainAll`]
//! drains every router and uploader at shutdown. [`AssignPartitions`] (from the lease
//! keeper) switches the processor to the partitions this node holds and replaces every
//! router by one of those partitions once the old one drained; warehouse uploaders and the
//! raw backup's writer run on the holder of partition 0 only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;

use crate::cluster::{ClusterConfig, LeaseGuard, LeaseKeeper};
use crate::gateway::{GatewayWriter, GatewayWriterConfig};
use crate::messages::{
    AssignPartitions, Drain, DrainReport, Heartbeat, Retire, SetPartitions, UpdateRouting,
};
use crate::processor::{Processor, ProcessorConfig, RouterRegistry};
use crate::router::{RouterActor, RouterConfig};
use crate::routing::{Route, RoutingTable};
use crate::sampler::{TelemetrySampler, TelemetrySamplerConfig};
use crate::store::Store;
use crate::telemetry as t;
use crate::warehouse::{UploaderConfig, WarehouseUploader};

/// Supervision settings.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// How often each child is probed.
    pub heartbeat_interval: Duration,
    /// How long a child may take to answer a probe.
    pub heartbeat_timeout: Duration,
    /// Probes in a row a child may leave unanswered before it is replaced.
    pub max_missed_heartbeats: u32,
    /// First delay before reviving a child that was revived moments ago; doubles per
    /// revival up to `revive_backoff_max` (a child dying at once again must not spin).
    pub revive_backoff: Duration,
    /// Largest revival delay.
    pub revive_backoff_max: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(5),
            max_missed_heartbeats: 3,
            revive_backoff: Duration::from_secs(1),
            revive_backoff_max: Duration::from_secs(30),
        }
    }
}

/// When a dead child may be started again: at once the first time, then after a delay
/// that doubles with each revival within a minute of the previous one.
#[derive(Debug, Clone, Default)]
pub struct Revivals {
    count: u32,
    last: Option<tokio::time::Instant>,
}

impl Revivals {
    /// Records a revival at `now` and answers how long to wait before it.
    pub fn next_delay(&mut self, now: tokio::time::Instant, config: &SupervisorConfig) -> Duration {
        let recent = self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) < Duration::from_secs(60));
        self.count = if recent {
            self.count.saturating_add(1)
        } else {
            0
        };
        self.last = Some(now);
        if self.count == 0 {
            return Duration::ZERO;
        }
        config
            .revive_backoff
            .saturating_mul(1u32 << (self.count - 1).min(16))
            .min(config.revive_backoff_max)
    }
}

/// Everything the tree needs to start.
pub struct PipelineConfig {
    /// GatewayWriter tuning.
    pub writer: GatewayWriterConfig,
    /// Processor tuning.
    pub processor: ProcessorConfig,
    /// Router defaults.
    pub router: RouterConfig,
    /// Warehouse uploader settings.
    pub warehouse: UploaderConfig,
    /// Sources → destinations.
    pub routing: Arc<RoutingTable>,
    /// Heartbeats.
    pub supervisor: SupervisorConfig,
    /// The lease keeper's guard, which routers check before every dispatch.
    pub guard: Arc<LeaseGuard>,
    /// The lease keeper's settings (none: no keeper, as in tests of the tree alone).
    pub cluster: Option<ClusterConfig>,
    /// The backlog sampler's settings.
    pub sampler: TelemetrySamplerConfig,
    /// The raw backup (`[backup]`), when enabled.
    pub backup: Option<crate::backup::Backup>,
}

/// Addresses of the running warehouse uploaders, by destination id.
pub type UploaderRegistry = Arc<RwLock<HashMap<String, Addr<WarehouseUploader>>>>;

/// Addresses of the actors the tree runs, for the HTTP layer.
#[derive(Clone)]
pub struct Children {
    /// The group-commit writer behind the ingest endpoints (replaced if it dies).
    pub gateway_writer: Arc<RwLock<Addr<GatewayWriter>>>,
    /// The lease keeper (replaced if it dies), once started.
    pub lease_keeper: Arc<RwLock<Option<Addr<LeaseKeeper>>>>,
    /// The processor (replaced if it dies).
    pub processor: Arc<RwLock<Addr<Processor>>>,
    /// Routers by destination id.
    pub routers: RouterRegistry,
    /// Warehouse uploaders by destination id.
    pub warehouses: UploaderRegistry,
    /// False while a child misses its heartbeats.
    pub healthy: Arc<AtomicBool>,
    /// The console's live feed: accepted events and destinations' answers.
    pub live: Arc<crate::live::LiveFeed>,
}

impl Children {
    /// The current gateway writer.
    pub fn gateway_writer(&self) -> Addr<GatewayWriter> {
        match self.gateway_writer.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The current lease keeper, if one runs.
    pub fn lease_keeper(&self) -> Option<Addr<LeaseKeeper>> {
        match self.lease_keeper.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Applies a new routing table (config reload): routers and uploaders of destinations that
/// were removed or changed drain and stop, those of new or changed ones start, unchanged
/// ones keep running; then the processor switches tables. Answers what changed.
#[derive(Message)]
#[rtype(result = "ReloadReport")]
pub struct Reconfigure {
    /// The new table.
    pub routing: Arc<RoutingTable>,
    /// How long a stopping router may take to finish its in-flight deliveries.
    pub drain_deadline: Duration,
}

/// What a [`Reconfigure`] did, by destination id.
#[derive(Debug, Clone, Default, MessageResponse, serde::Serialize)]
pub struct ReloadReport {
    /// Routers or uploaders started (new or changed destinations).
    pub started: Vec<String>,
    /// Routers or uploaders stopped (removed, disabled or changed destinations).
    pub stopped: Vec<String>,
    /// Left running as they were.
    pub unchanged: Vec<String>,
    /// Deliveries still running at the drain deadline, abandoned (redone later).
    pub abandoned: usize,
}

/// Drains every router and uploader (shutdown): no new deliveries or loads start; the
/// answer comes when what runs finished and its outcomes are written, or at the deadline.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "crate::messages::DrainReport")]
pub struct DrainAll {
    /// Longest wait.
    pub deadline: Duration,
}

/// Root of the tree (see the module comment).
pub struct RootSupervisor {
    children: Children,
    config: SupervisorConfig,
    store: Store,
    router_defaults: RouterConfig,
    warehouse_config: UploaderConfig,
    router_arbiter: ArbiterHandle,
    warehouse_arbiter: ArbiterHandle,
    processor_arbiter: ArbiterHandle,
    processor_config: ProcessorConfig,
    /// The routing table in force.
    routing: Arc<RoutingTable>,
    /// Destination id → fingerprint of the settings its running actor was built from.
    running: HashMap<String, String>,
    /// Destination id → the route its running actor serves (to revive it).
    routes: HashMap<String, Route>,
    /// The partitions this node holds, as last assigned.
    partitions: Arc<[i32]>,
    /// Set by [`DrainAll`]: the node is shutting down and starts nothing any more.
    stopping: bool,
    guard: Arc<LeaseGuard>,
    writer_config: GatewayWriterConfig,
    cluster: Option<ClusterConfig>,
    sampler_config: TelemetrySamplerConfig,
    sampler: Option<Addr<TelemetrySampler>>,
    /// Child name (`processor`, a destination id…) → probes missed in a row.
    misses: HashMap<String, u32>,
    /// Child name → its recent revivals (the backoff before the next).
    revivals: HashMap<String, Revivals>,
    /// The raw backup, when enabled: its writer runs beside the uploaders.
    backup: Option<crate::backup::Backup>,
    backup_running: bool,
    _arbiters: Vec<Arbiter>,
}

/// A child of the root, as the probe names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Child {
    GatewayWriter,
    Processor,
    LeaseKeeper,
    Sampler,
    /// A router or warehouse uploader, by destination id.
    Destination(String),
}

impl Child {
    fn key(&self) -> String {
        match self {
            Child::GatewayWriter => "gateway_writer".into(),
            Child::Processor => "processor".into(),
            Child::LeaseKeeper => "lease_keeper".into(),
            Child::Sampler => "telemetry_sampler".into(),
            Child::Destination(id) => format!("destination:{id}"),
        }
    }
}

/// Router settings for one destination: the defaults, plus the destination's own
/// `throttling: { limit, timeWindow }` (seconds) when it has one.
pub fn router_config_for(
    defaults: &RouterConfig,
    destination: &crate::workspace::Destination,
) -> RouterConfig {
    let mut c = defaults.clone();
    if let Some(th) = destination.config.get("throttling") {
        let limit = th
            .get("limit")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let window = th
            .get("timeWindow")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(1.0);
        c.throttle_limit = u32::try_from(limit).unwrap_or(u32::MAX);
        c.throttle_window = Duration::from_secs_f64(window.max(0.001));
    }
    c
}

/// What a running router or uploader depends on: its destination's settings and kind and,
/// for a warehouse, the sources feeding it (their names pick the schemas).
fn fingerprint(routing: &RoutingTable, route: &Route) -> String {
    let d = &route.destination;
    let mut sources: Vec<(String, String)> = if route.kind.warehouse().is_some() {
        routing.sources_of(&d.id).into_iter().collect()
    } else {
        Vec::new()
    };
    sources.sort();
    // A destination script's router re-runs the script for retried events: a new script
    // version needs a new router. (User transformations run in the processor only.)
    let script = route.kind.script().map(|s| s.id());
    serde_json::json!([
        d.enabled,
        d.destination_definition.name,
        d.destination_definition.config,
        d.config,
        sources,
        script
    ])
    .to_string()
}

fn start_processor(
    arbiter: &ArbiterHandle,
    store: &Store,
    routing: &Arc<RoutingTable>,
    routers: &RouterRegistry,
    config: &ProcessorConfig,
) -> Addr<Processor> {
    let (s, r, reg, c) = (
        store.clone(),
        routing.clone(),
        routers.clone(),
        config.clone(),
    );
    actix::Supervisor::start_in_arbiter(arbiter, move |_| Processor::new(s, r, reg, c))
}

fn start_writer(store: &Store, config: &GatewayWriterConfig) -> Addr<GatewayWriter> {
    let (s, c) = (store.clone(), config.clone());
    actix::Supervisor::start(move |_| GatewayWriter::new(s, c))
}

impl RootSupervisor {
    fn start_keeper(&mut self, ctx: &mut Context<Self>) {
        let Some(config) = self.cluster.clone() else {
            return;
        };
        let (store, assign, guard) = (
            self.store.clone(),
            ctx.address().recipient(),
            self.guard.clone(),
        );
        let addr =
            actix::Supervisor::start(move |_| LeaseKeeper::new(store, config, assign, guard));
        if let Ok(mut k) = self.children.lease_keeper.write() {
            *k = Some(addr);
        }
    }

    fn start_sampler(&mut self) {
        let (store, routers, config) = (
            self.store.clone(),
            self.children.routers.clone(),
            self.sampler_config.clone(),
        );
        self.sampler = Some(actix::Supervisor::start(move |_| {
            TelemetrySampler::new(store, routers, config)
        }));
    }

    /// Starts the tree and returns the children's addresses.
    pub fn start(store: Store, config: PipelineConfig) -> (Addr<RootSupervisor>, Children) {
        let gateway_writer = start_writer(&store, &config.writer);
        let router_arbiter = Arbiter::new();
        let warehouse_arbiter = Arbiter::new();
        let processor_arbiter = Arbiter::new();
        let routers: RouterRegistry = Arc::new(RwLock::new(HashMap::new()));
        let warehouses: UploaderRegistry = Arc::new(RwLock::new(HashMap::new()));
        let processor = start_processor(
            &processor_arbiter.handle(),
            &store,
            &config.routing,
            &routers,
            &config.processor,
        );
        let children = Children {
            gateway_writer: Arc::new(RwLock::new(gateway_writer)),
            lease_keeper: Arc::new(RwLock::new(None)),
            processor: Arc::new(RwLock::new(processor)),
            routers,
            warehouses,
            healthy: Arc::new(AtomicBool::new(true)),
            live: Arc::new(crate::live::LiveFeed::new()),
        };
        let mut root = RootSupervisor {
            children: children.clone(),
            config: config.supervisor,
            store,
            router_defaults: config.router,
            warehouse_config: config.warehouse,
            router_arbiter: router_arbiter.handle(),
            warehouse_arbiter: warehouse_arbiter.handle(),
            processor_arbiter: processor_arbiter.handle(),
            processor_config: config.processor,
            routing: config.routing.clone(),
            running: HashMap::new(),
            routes: HashMap::new(),
            partitions: Arc::from(Vec::new()),
            stopping: false,
            guard: config.guard.clone(),
            writer_config: config.writer,
            cluster: config.cluster,
            sampler_config: config.sampler,
            sampler: None,
            misses: HashMap::new(),
            revivals: HashMap::new(),
            backup: config.backup,
            backup_running: false,
            _arbiters: vec![router_arbiter, processor_arbiter, warehouse_arbiter],
        };
        for route in config.routing.enabled_destinations() {
            root.start_destination(&config.routing, &route);
        }
        (root.start(), children)
    }

    /// Starts the backup writer (when the backup is enabled and this node holds partition
    /// 0, like the uploaders).
    fn start_backup(&mut self) {
        let Some(backup) = &self.backup else {
            return;
        };
        if self.backup_running || self.stopping || !self.partitions.contains(&0) {
            return;
        }
        let (spec, sink) = (backup.spec(), backup.sink());
        let (s, wc) = (self.store.clone(), self.warehouse_config.clone());
        let addr = actix::Supervisor::start_in_arbiter(&self.warehouse_arbiter, move |_| {
            WarehouseUploader::new(spec, sink, s, wc)
        });
        if let Ok(mut w) = self.children.warehouses.write() {
            w.insert(crate::backup::BACKUP_ID.to_owned(), addr);
        }
        self.backup_running = true;
    }

    /// Starts the router or uploader of one enabled destination (an uploader only while
    /// this node holds partition 0).
    fn start_destination(&mut self, routing: &RoutingTable, route: &Route) {
        let id = route.destination.id.clone();
        if let Some(kind) = route.kind.warehouse() {
            if !self.partitions.contains(&0) {
                return;
            }
            let sources = routing.sources_of(&id);
            let (spec, sink) = (kind.spec(), kind.sink(&sources, &self.warehouse_config));
            let (s, wc) = (self.store.clone(), self.warehouse_config.clone());
            let addr = actix::Supervisor::start_in_arbiter(&self.warehouse_arbiter, move |_| {
                WarehouseUploader::new(spec, sink, s, wc)
            });
            if let Ok(mut w) = self.children.warehouses.write() {
                w.insert(id.clone(), addr);
            }
        } else {
            let Some(kind) = route.delivery.clone() else {
                // The factory gives every kind without an uploader a delivery side.
                tracing::error!(destination = %id, "destination kind neither delivers nor loads; not started");
                return;
            };
            let rc = router_config_for(&self.router_defaults, &route.destination);
            let (rid, s) = (id.clone(), self.store.clone());
            let (parts, guard) = (self.partitions.clone(), self.guard.clone());
            let (secrets, live) = (route.secrets.clone(), self.children.live.clone());
            let addr = actix::Supervisor::start_in_arbiter(&self.router_arbiter, move |_| {
                RouterActor::new(&rid, parts, guard, kind, s, rc)
                    .with_secrets(secrets)
                    .with_live(live)
            });
            if let Ok(mut r) = self.children.routers.write() {
                r.insert(id.clone(), addr);
            }
        }
        self.running.insert(id.clone(), fingerprint(routing, route));
        self.routes.insert(id, route.clone());
    }

    /// Takes a destination's actor out of the registries and drains it; the returned
    /// future answers how many deliveries were abandoned, after retiring the actor.
    fn stop_destination(
        &mut self,
        id: &str,
        deadline: Duration,
    ) -> futures::future::BoxFuture<'static, usize> {
        self.running.remove(id);
        self.routes.remove(id);
        let router = self
            .children
            .routers
            .write()
            .ok()
            .and_then(|mut r| r.remove(id));
        let uploader = self
            .children
            .warehouses
            .write()
            .ok()
            .and_then(|mut w| w.remove(id));
        // The mailbox answers within the deadline or the actor is gone.
        let wait = deadline + Duration::from_secs(5);
        Box::pin(async move {
            let mut abandoned = 0;
            if let Some(r) = router {
                abandoned += r
                    .send(Drain { deadline })
                    .timeout(wait)
                    .await
                    .map_or(0, |d| d.abandoned);
                r.do_send(Retire);
            }
            if let Some(u) = uploader {
                abandoned += u
                    .send(Drain { deadline })
                    .timeout(wait)
                    .await
                    .map_or(0, |d| d.abandoned);
                u.do_send(Retire);
            }
            abandoned
        })
    }

    fn probe(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let timeout = self.config.heartbeat_timeout;
        type Probe = std::pin::Pin<
            Box<
                dyn std::future::Future<
                    Output = Result<crate::messages::HeartbeatReply, MailboxError>,
                >,
            >,
        >;
        let mut probes: Vec<(Child, &'static str, Probe)> = Vec::new();
        let writer = self.children.gateway_writer();
        probes.push((
            Child::GatewayWriter,
            "gateway_writer",
            Box::pin(writer.send(Heartbeat).timeout(timeout)),
        ));
        if let Ok(p) = self.children.processor.read() {
            probes.push((
                Child::Processor,
                "processor",
                Box::pin(p.send(Heartbeat).timeout(timeout)),
            ));
        }
        if let Some(k) = self.children.lease_keeper() {
            probes.push((
                Child::LeaseKeeper,
                "lease_keeper",
                Box::pin(k.send(Heartbeat).timeout(timeout)),
            ));
        }
        if let Some(s) = &self.sampler {
            probes.push((
                Child::Sampler,
                "telemetry_sampler",
                Box::pin(s.send(Heartbeat).timeout(timeout)),
            ));
        }
        if let Ok(r) = self.children.routers.read() {
            for (id, a) in r.iter() {
                probes.push((
                    Child::Destination(id.clone()),
                    "router",
                    Box::pin(a.send(Heartbeat).timeout(timeout)),
                ));
            }
        }
        if let Ok(w) = self.children.warehouses.read() {
            for (id, a) in w.iter() {
                let actor = if id == crate::backup::BACKUP_ID {
                    "backup_writer"
                } else {
                    "warehouse_uploader"
                };
                probes.push((
                    Child::Destination(id.clone()),
                    actor,
                    Box::pin(a.send(Heartbeat).timeout(timeout)),
                ));
            }
        }
        let healthy = self.children.healthy.clone();
        ctx.spawn(
            async move {
                let mut answers = Vec::with_capacity(probes.len());
                for (child, actor, probe) in probes {
                    let r = probe.await;
                    if let Err(e) = &r {
                        metrics::counter!(t::SUPERVISOR_HEARTBEAT_MISSES_TOTAL, "actor" => actor)
                            .increment(1);
                        tracing::error!(error = %e, actor, "heartbeat not answered");
                    }
                    // A closed mailbox: the actor is gone (a panic ends its task, and with
                    // it actix's restarting wrapper).
                    let closed = matches!(r, Err(MailboxError::Closed));
                    answers.push((child, r.is_ok(), closed));
                }
                healthy.store(answers.iter().all(|a| a.1), Ordering::Relaxed);
                answers
            }
            .into_actor(self)
            .map(|answers, act, ctx| {
                for (child, answered, closed) in answers {
                    let key = child.key();
                    if answered {
                        act.misses.remove(&key);
                        continue;
                    }
                    let missed = act.misses.entry(key.clone()).or_insert(0);
                    *missed += 1;
                    // Gone, or alive but stuck: replaced either way.
                    if closed || *missed >= act.config.max_missed_heartbeats {
                        act.misses.remove(&key);
                        let delay = act
                            .revivals
                            .entry(key)
                            .or_default()
                            .next_delay(tokio::time::Instant::now(), &act.config);
                        if delay.is_zero() {
                            act.revive(child, ctx);
                        } else {
                            tracing::warn!(?delay, child = ?child, "reviving after a backoff");
                            ctx.run_later(delay, move |act, ctx| act.revive(child, ctx));
                        }
                    }
                }
            }),
        );
    }

    /// Starts a fresh actor in place of a dead or stuck one; it resumes from Postgres (the
    /// writer from its clients: requests sent to the old one were answered 503 or time out
    /// on their side, none was acknowledged).
    fn revive(&mut self, child: Child, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        match child {
            Child::GatewayWriter => {
                metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => "gateway_writer")
                    .increment(1);
                tracing::warn!("gateway writer died or stopped answering; starting a new one");
                let addr = start_writer(&self.store, &self.writer_config);
                if let Ok(mut w) = self.children.gateway_writer.write() {
                    *w = addr;
                }
            }
            Child::Processor => {
                metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => "processor")
                    .increment(1);
                tracing::warn!("processor died or stopped answering; starting a new one");
                let addr = start_processor(
                    &self.processor_arbiter,
                    &self.store,
                    &self.routing,
                    &self.children.routers,
                    &self.processor_config,
                );
                addr.do_send(SetPartitions(self.partitions.clone()));
                if let Ok(mut p) = self.children.processor.write() {
                    *p = addr;
                }
            }
            Child::LeaseKeeper => {
                metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => "lease_keeper")
                    .increment(1);
                tracing::warn!("lease keeper died or stopped answering; starting a new one (it adopts this node's leases)");
                self.start_keeper(ctx);
            }
            Child::Sampler => {
                metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => "telemetry_sampler")
                    .increment(1);
                tracing::warn!("telemetry sampler died or stopped answering; starting a new one");
                self.start_sampler();
            }
            Child::Destination(id) if id == crate::backup::BACKUP_ID => {
                metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => "backup_writer")
                    .increment(1);
                tracing::warn!("backup writer died or stopped answering; starting a new one");
                self.backup_running = false;
                self.start_backup();
            }
            Child::Destination(id) => {
                let Some(route) = self.routes.get(&id).cloned() else {
                    return;
                };
                let actor = if route.kind.warehouse().is_some() {
                    "warehouse_uploader"
                } else {
                    "router"
                };
                metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => actor).increment(1);
                tracing::warn!(destination = %id, actor, "actor died or stopped answering; starting a new one");
                let routing = self.routing.clone();
                self.start_destination(&routing, &route);
            }
        }
    }
}

impl Actor for RootSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start_keeper(ctx);
        self.start_sampler();
        ctx.run_interval(self.config.heartbeat_interval, |act, ctx| act.probe(ctx));
    }
}

impl Handler<Reconfigure> for RootSupervisor {
    type Result = AtomicResponse<Self, ReloadReport>;

    fn handle(&mut self, msg: Reconfigure, _ctx: &mut Self::Context) -> Self::Result {
        let routing = msg.routing;
        let wanted: HashMap<String, Route> = routing
            .enabled_destinations()
            .into_iter()
            .map(|r| (r.destination.id.clone(), r))
            .collect();
        let mut report = ReloadReport::default();
        let mut stopping = Vec::new();
        let mut ids: Vec<String> = self.running.keys().cloned().collect();
        ids.sort();
        for id in ids {
            let keep = wanted
                .get(&id)
                .is_some_and(|r| self.running.get(&id) == Some(&fingerprint(&routing, r)));
            if keep {
                report.unchanged.push(id);
            } else {
                stopping.push(self.stop_destination(&id, msg.drain_deadline));
                report.stopped.push(id);
            }
        }
        AtomicResponse::new(Box::pin(
            async move {
                // Old actors finish (or abandon) their deliveries before new ones for the
                // same destination start, so a key is never delivered by two at once.
                let abandoned: usize = futures::future::join_all(stopping).await.into_iter().sum();
                (abandoned, routing)
            }
            .into_actor(self)
            .map(move |(abandoned, routing), act, _ctx| {
                act.routing = routing.clone();
                let mut started = Vec::new();
                let mut ids: Vec<&String> = wanted.keys().collect();
                ids.sort();
                for id in ids {
                    if !act.running.contains_key(id) {
                        act.start_destination(&routing, &wanted[id]);
                        started.push(id.clone());
                    }
                }
                report.started = started;
                report.abandoned = abandoned;
                tracing::info!(started = ?report.started, stopped = ?report.stopped,
                    unchanged = report.unchanged.len(), abandoned, "routing reloaded");
                (report, routing)
            })
            .then(move |(report, routing), act, _ctx| {
                let processor = act.children.processor.read().map(|p| p.clone()).ok();
                async move {
                    let Some(processor) = processor else {
                        return report;
                    };
                    if let Err(e) = processor.send(UpdateRouting(routing)).await {
                        tracing::error!(error = %e, "processor did not take the new routing table");
                    }
                    report
                }
                .into_actor(act)
            }),
        ))
    }
}

impl Handler<AssignPartitions> for RootSupervisor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: AssignPartitions, _ctx: &mut Self::Context) -> Self::Result {
        let new = msg.partitions;
        if new == self.partitions || self.stopping {
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        if let Ok(p) = self.children.processor.read() {
            p.do_send(SetPartitions(new.clone()));
        }
        // Every router serves the old set: replace them all once they drained, so no job
        // is delivered by two routers at once. Uploaders move with partition 0.
        let keep_uploaders = self.partitions.contains(&0) == new.contains(&0);
        let mut ids: Vec<String> = self
            .routes
            .iter()
            .filter(|(_, r)| r.kind.warehouse().is_none() || !keep_uploaders)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        let mut stopping: Vec<_> = ids
            .iter()
            .map(|id| self.stop_destination(id, msg.drain_deadline))
            .collect();
        if !keep_uploaders && self.backup_running {
            self.backup_running = false;
            stopping.push(self.stop_destination(crate::backup::BACKUP_ID, msg.drain_deadline));
        }
        AtomicResponse::new(Box::pin(
            async move { futures::future::join_all(stopping).await.into_iter().sum::<usize>() }
                .into_actor(self)
                .map(move |abandoned, act, _ctx| {
                    act.partitions = new;
                    act.start_backup();
                    let routing = act.routing.clone();
                    for route in routing.enabled_destinations() {
                        if !act.running.contains_key(&route.destination.id) {
                            act.start_destination(&routing, &route);
                        }
                    }
                    if abandoned > 0 {
                        tracing::warn!(abandoned, "deliveries abandoned while switching partitions; redone by the partition's holder");
                    }
                }),
        ))
    }
}

impl Handler<DrainAll> for RootSupervisor {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, msg: DrainAll, _ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let mut ids: Vec<String> = self.running.keys().cloned().collect();
        if self.backup_running {
            self.backup_running = false;
            ids.push(crate::backup::BACKUP_ID.to_owned());
        }
        let stopping: Vec<_> = ids
            .iter()
            .map(|id| self.stop_destination(id, msg.deadline))
            .collect();
        Box::pin(async move {
            let abandoned = futures::future::join_all(stopping).await.into_iter().sum();
            DrainReport { abandoned }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a paused clock: the first revival is immediate, quick repeats back off doubling
    /// up to the cap, and a quiet minute resets the count.
    #[tokio::test(start_paused = true)]
    async fn revivals_back_off_when_a_child_keeps_dying() {
        let config = SupervisorConfig::default();
        let mut r = Revivals::default();
        let mut delays = Vec::new();
        for _ in 0..8 {
            delays.push(r.next_delay(tokio::time::Instant::now(), &config));
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![0, 1, 2, 4, 8, 16, 30, 30]);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            r.next_delay(tokio::time::Instant::now(), &config),
            Duration::ZERO
        );
    }
}
