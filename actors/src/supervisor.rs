//! The supervision tree. `RootSupervisor` starts every long-lived actor (today the
//! GatewayWriter) under actix's `Supervisor`, which restarts a stopped actor with the same
//! mailbox and state, so no queued message is lost; restarts are counted in
//! `keel_supervisor_restarts_total`. The root also sends each child a [`Heartbeat`] on an
//! interval and counts the ones not answered in time, which `/ready` reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::gateway::{GatewayWriter, GatewayWriterConfig};
use crate::messages::Heartbeat;
use crate::store::Store;
use crate::telemetry as t;

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

/// Addresses of the actors the tree runs, for the HTTP layer.
#[derive(Clone)]
pub struct Children {
    /// The group-commit writer behind the ingest endpoints.
    pub gateway_writer: Addr<GatewayWriter>,
    /// False while a child misses its heartbeats.
    pub healthy: Arc<AtomicBool>,
}

/// Root of the tree (see the module comment).
pub struct RootSupervisor {
    children: Children,
    config: SupervisorConfig,
}

impl RootSupervisor {
    /// Starts the tree on the current arbiter and returns the children's addresses.
    pub fn start(
        store: Store,
        writer_config: GatewayWriterConfig,
        config: SupervisorConfig,
    ) -> (Addr<RootSupervisor>, Children) {
        let gateway_writer =
            actix::Supervisor::start(move |_| GatewayWriter::new(store, writer_config));
        let children = Children {
            gateway_writer,
            healthy: Arc::new(AtomicBool::new(true)),
        };
        let root = RootSupervisor {
            children: children.clone(),
            config,
        }
        .start();
        (root, children)
    }

    fn probe(&mut self, ctx: &mut Context<Self>) {
        let request = self
            .children
            .gateway_writer
            .send(Heartbeat)
            .timeout(self.config.heartbeat_timeout);
        let healthy = self.children.healthy.clone();
        ctx.spawn(
            async move {
                match request.await {
                    Ok(_) => healthy.store(true, Ordering::Relaxed),
                    Err(e) => {
                        metrics::counter!(t::SUPERVISOR_HEARTBEAT_MISSES_TOTAL, "actor" => "gateway_writer")
                            .increment(1);
                        tracing::error!(error = %e, actor = "gateway_writer", "heartbeat not answered");
                        healthy.store(false, Ordering::Relaxed);
                    }
                }
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
