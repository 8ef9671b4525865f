//! The supervision tree: Root → {GatewayWriter, Processor, Router×N, WarehouseUploader×M}.
//! Every child runs under actix's `Supervisor`, which restarts a stopped actor with the
//! same mailbox and state, so no queued message is lost; restarts are counted in
//! `keel_supervisor_restarts_total` and routers wait a capped exponential backoff before
//! resuming from Postgres. The processor and the routers run on their own threads
//! (arbiters) so routing CPU and delivery I/O never delay ingest; warehouse uploaders share
//! a third, so a slow warehouse load never delays deliveries. The root sends each
//! child a [`Heartbeat`] on an interval and counts the ones not answered in time, which
//! `/ready` reports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;

use crate::gateway::{GatewayWriter, GatewayWriterConfig};
use crate::messages::Heartbeat;
use crate::processor::{Processor, ProcessorConfig, RouterRegistry, RoutingTable};
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
}

/// Addresses of the actors the tree runs, for the HTTP layer.
#[derive(Clone)]
pub struct Children {
    /// The group-commit writer behind the ingest endpoints.
    pub gateway_writer: Addr<GatewayWriter>,
    /// The processor.
    pub processor: Addr<Processor>,
    /// Routers by destination id.
    pub routers: RouterRegistry,
    /// Warehouse uploaders by destination id.
    pub warehouses: Arc<HashMap<String, Addr<WarehouseUploader>>>,
    /// False while a child misses its heartbeats.
    pub healthy: Arc<AtomicBool>,
}

/// Root of the tree (see the module comment).
pub struct RootSupervisor {
    children: Children,
    config: SupervisorConfig,
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

impl RootSupervisor {
    /// Starts the tree and returns the children's addresses.
    pub fn start(store: Store, config: PipelineConfig) -> (Addr<RootSupervisor>, Children) {
        let writer_store = store.clone();
        let writer_config = config.writer;
        let gateway_writer =
            actix::Supervisor::start(move |_| GatewayWriter::new(writer_store, writer_config));

        let router_arbiter = Arbiter::new();
        let registry: RouterRegistry = Arc::new(RwLock::new(HashMap::new()));
        let mut routers = HashMap::new();
        let warehouse_arbiter = Arbiter::new();
        let mut warehouses = HashMap::new();
        for route in config.routing.enabled_destinations() {
            if let Some(spec) = route.kind.warehouse() {
                let spec = Arc::new(spec.clone());
                let sources = config.routing.sources_of(&route.destination.id);
                let (s, wc) = (store.clone(), config.warehouse.clone());
                let addr =
                    actix::Supervisor::start_in_arbiter(&warehouse_arbiter.handle(), move |_| {
                        WarehouseUploader::new(spec, &sources, s, wc)
                    });
                warehouses.insert(route.destination.id.clone(), addr);
                continue;
            }
            let rc = router_config_for(&config.router, &route.destination);
            let (id, kind, s) = (
                route.destination.id.clone(),
                route.kind.clone(),
                store.clone(),
            );
            let addr = actix::Supervisor::start_in_arbiter(&router_arbiter.handle(), move |_| {
                RouterActor::new(&id, kind, s, rc)
            });
            routers.insert(route.destination.id.clone(), addr);
        }
        if let Ok(mut r) = registry.write() {
            *r = routers;
        }

        let processor_arbiter = Arbiter::new();
        let (ps, pr, pc, preg) = (store, config.routing, config.processor, registry.clone());
        let processor =
            actix::Supervisor::start_in_arbiter(&processor_arbiter.handle(), move |_| {
                Processor::new(ps, pr, preg, pc)
            });

        let children = Children {
            gateway_writer,
            processor,
            routers: registry,
            warehouses: Arc::new(warehouses),
            healthy: Arc::new(AtomicBool::new(true)),
        };
        let root = RootSupervisor {
            children: children.clone(),
            config: config.supervisor,
            _arbiters: vec![router_arbiter, processor_arbiter, warehouse_arbiter],
        }
        .start();
        (root, children)
    }

    fn probe(&mut self, ctx: &mut Context<Self>) {
        let timeout = self.config.heartbeat_timeout;
        let writer = self
            .children
            .gateway_writer
            .send(Heartbeat)
            .timeout(timeout);
        let processor = self.children.processor.send(Heartbeat).timeout(timeout);
        let routers: Vec<_> = self
            .children
            .routers
            .read()
            .map(|r| {
                r.values()
                    .map(|a| a.send(Heartbeat).timeout(timeout))
                    .collect()
            })
            .unwrap_or_default();
        let warehouses: Vec<_> = self
            .children
            .warehouses
            .values()
            .map(|a| a.send(Heartbeat).timeout(timeout))
            .collect();
        let healthy = self.children.healthy.clone();
        ctx.spawn(
            async move {
                let mut ok = true;
                let mut check = |actor: &'static str, r: Result<crate::messages::HeartbeatReply, MailboxError>| {
                    if let Err(e) = r {
                        metrics::counter!(t::SUPERVISOR_HEARTBEAT_MISSES_TOTAL, "actor" => actor).increment(1);
                        tracing::error!(error = %e, actor, "heartbeat not answered");
                        ok = false;
                    }
                };
                check("gateway_writer", writer.await);
                check("processor", processor.await);
                for r in routers {
                    check("router", r.await);
                }
                for w in warehouses {
                    check("warehouse_uploader", w.await);
                }
                healthy.store(ok, Ordering::Relaxed);
            }
            .into_actor(self),
        );
    }
}

impl Actor for RootSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.heartbeat_interval, |act, ctx| act.probe(ctx));
    }
}
