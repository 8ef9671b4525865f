//! The supervision tree: Root → {GatewayWriter, Processor, Router×N, WarehouseUploader×M}.
//! Every child runs under actix's `Supervisor`, which restarts a stopped actor with the
//! same mailbox and state, so no queued message is lost; restarts are counted in
//! `keel_supervisor_restarts_total` and routers wait a capped exponential backoff before
//! resuming from Postgres. The processor and the routers run on their own threads
//! (arbiters) so routing CPU and delivery I/O never delay ingest; warehouse uploaders share
//! a third, so a slow warehouse load never delays deliveries. The root sends each
//! child a [`Heartbeat`] on an interval and counts the ones not answered in time, which
//! `/ready` reports. [`Reconfigure`] applies a reloaded workspace: only the actors of
//! changed destinations drain (finish their in-flight work) and are replaced; [`DrainAll`]
//! drains every router and uploader at shutdown. [`AssignPartitions`] (from the lease
//! keeper) switches the processor to the partitions this node holds and replaces every
//! router by one of those partitions once the old one drained; warehouse uploaders run on
//! the holder of partition 0 only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;

use crate::cluster::LeaseGuard;
use crate::gateway::{GatewayWriter, GatewayWriterConfig};
use crate::messages::{
    AssignPartitions, Drain, DrainReport, Heartbeat, Retire, SetPartitions, UpdateRouting,
};
use crate::processor::{Processor, ProcessorConfig, Route, RouterRegistry, RoutingTable};
use crate::router::{RouterActor, RouterConfig};
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
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(5),
        }
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
}

/// Addresses of the running warehouse uploaders, by destination id.
pub type UploaderRegistry = Arc<RwLock<HashMap<String, Addr<WarehouseUploader>>>>;

/// Addresses of the actors the tree runs, for the HTTP layer.
#[derive(Clone)]
pub struct Children {
    /// The group-commit writer behind the ingest endpoints.
    pub gateway_writer: Addr<GatewayWriter>,
    /// The processor (replaced if it dies).
    pub processor: Arc<RwLock<Addr<Processor>>>,
    /// Routers by destination id.
    pub routers: RouterRegistry,
    /// Warehouse uploaders by destination id.
    pub warehouses: UploaderRegistry,
    /// False while a child misses its heartbeats.
    pub healthy: Arc<AtomicBool>,
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
    _arbiters: Vec<Arbiter>,
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

impl RootSupervisor {
    /// Starts the tree and returns the children's addresses.
    pub fn start(store: Store, config: PipelineConfig) -> (Addr<RootSupervisor>, Children) {
        let writer_store = store.clone();
        let writer_config = config.writer;
        let gateway_writer =
            actix::Supervisor::start(move |_| GatewayWriter::new(writer_store, writer_config));
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
            gateway_writer,
            processor: Arc::new(RwLock::new(processor)),
            routers,
            warehouses,
            healthy: Arc::new(AtomicBool::new(true)),
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
            _arbiters: vec![router_arbiter, processor_arbiter, warehouse_arbiter],
        };
        for route in config.routing.enabled_destinations() {
            root.start_destination(&config.routing, &route);
        }
        (root.start(), children)
    }

    /// Starts the router or uploader of one enabled destination (an uploader only while
    /// this node holds partition 0).
    fn start_destination(&mut self, routing: &RoutingTable, route: &Route) {
        let id = route.destination.id.clone();
        if let Some(spec) = route.kind.warehouse() {
            if !self.partitions.contains(&0) {
                return;
            }
            let spec = Arc::new(spec.clone());
            let sources = routing.sources_of(&id);
            let (s, wc) = (self.store.clone(), self.warehouse_config.clone());
            let addr = actix::Supervisor::start_in_arbiter(&self.warehouse_arbiter, move |_| {
                WarehouseUploader::new(spec, &sources, s, wc)
            });
            if let Ok(mut w) = self.children.warehouses.write() {
                w.insert(id.clone(), addr);
            }
        } else {
            let rc = router_config_for(&self.router_defaults, &route.destination);
            let (rid, kind, s) = (id.clone(), route.kind.clone(), self.store.clone());
            let (parts, guard) = (self.partitions.clone(), self.guard.clone());
            let addr = actix::Supervisor::start_in_arbiter(&self.router_arbiter, move |_| {
                RouterActor::new(&rid, parts, guard, kind, s, rc)
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
        let timeout = self.config.heartbeat_timeout;
        let writer = self
            .children
            .gateway_writer
            .send(Heartbeat)
            .timeout(timeout);
        let processor = self
            .children
            .processor
            .read()
            .map(|p| p.send(Heartbeat).timeout(timeout))
            .ok();
        let routers: Vec<_> = self
            .children
            .routers
            .read()
            .map(|r| {
                r.iter()
                    .map(|(id, a)| (id.clone(), a.send(Heartbeat).timeout(timeout)))
                    .collect()
            })
            .unwrap_or_default();
        let warehouses: Vec<_> = self
            .children
            .warehouses
            .read()
            .map(|w| {
                w.iter()
                    .map(|(id, a)| (id.clone(), a.send(Heartbeat).timeout(timeout)))
                    .collect()
            })
            .unwrap_or_default();
        let healthy = self.children.healthy.clone();
        ctx.spawn(
            async move {
                let mut ok = true;
                // A closed mailbox means the actor is gone (a panic ends its task, and
                // with it actix's restarting wrapper): those are revived below.
                let mut check = |actor: &'static str, r: Result<crate::messages::HeartbeatReply, MailboxError>| -> bool {
                    match r {
                        Ok(_) => false,
                        Err(e) => {
                            metrics::counter!(t::SUPERVISOR_HEARTBEAT_MISSES_TOTAL, "actor" => actor).increment(1);
                            tracing::error!(error = %e, actor, "heartbeat not answered");
                            ok = false;
                            matches!(e, MailboxError::Closed)
                        }
                    }
                };
                check("gateway_writer", writer.await);
                let processor_dead = match processor {
                    Some(p) => check("processor", p.await),
                    None => false,
                };
                let mut dead = Vec::new();
                for (id, r) in routers {
                    if check("router", r.await) {
                        dead.push(id);
                    }
                }
                for (id, w) in warehouses {
                    if check("warehouse_uploader", w.await) {
                        dead.push(id);
                    }
                }
                healthy.store(ok, Ordering::Relaxed);
                (processor_dead, dead)
            }
            .into_actor(self)
            .map(|(processor_dead, dead), act, _ctx| act.revive(processor_dead, dead)),
        );
    }

    /// Starts fresh actors in place of dead ones; they resume from Postgres.
    fn revive(&mut self, processor_dead: bool, dead: Vec<String>) {
        if processor_dead {
            metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => "processor").increment(1);
            tracing::warn!("processor died; starting a new one");
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
        for id in dead {
            let Some(route) = self.routes.get(&id).cloned() else {
                continue;
            };
            let actor = if route.kind.warehouse().is_some() {
                "warehouse_uploader"
            } else {
                "router"
            };
            metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => actor).increment(1);
            tracing::warn!(destination = %id, actor, "actor died; starting a new one");
            let routing = self.routing.clone();
            self.start_destination(&routing, &route);
        }
    }
}

impl Actor for RootSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
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
        let stopping: Vec<_> = ids
            .iter()
            .map(|id| self.stop_destination(id, msg.drain_deadline))
            .collect();
        AtomicResponse::new(Box::pin(
            async move { futures::future::join_all(stopping).await.into_iter().sum::<usize>() }
                .into_actor(self)
                .map(move |abandoned, act, _ctx| {
                    act.partitions = new;
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
        let ids: Vec<String> = self.running.keys().cloned().collect();
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
