//! Processor: reads the unconsumed `gw_jobs` of the partitions this node holds, in id order
//! and bounded batches, explodes
//! each request into events, drops messageId duplicates (the gateway listed them in the row;
//! older rows are looked up in the dedup table), routes each event to its source's destinations (enabled,
//! `integrations`, supported types, event filtering), maps it with the destination kind, and
//! commits `rt_jobs` + `wh_jobs` (one row per request and warehouse destination) +
//! `routing_log` + checkpoints + deletion of the consumed `gw_jobs` in one transaction,
//! fenced on this node's leases (a batch whose partitions moved to another node is rolled
//! back and left to it). Then it wakes the routers it fed. It never delivers anything itself.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::messages::{ReplayTransformed, SetPartitions, UpdateRouting, Wake};
use crate::router::RouterActor;
use crate::routing::RoutingTable;
use crate::store::{Store, StoreError};
use crate::telemetry as t;

mod event;
mod pipeline;
mod replay;

use pipeline::process_batch;
pub use pipeline::BatchError;
use replay::replay_transformed;
pub use replay::{preview, PreviewRoute};

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
            batch_jobs: 512,
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

crate::child_handlers!(Processor, |p| ("processor", usize::from(p.busy)));
