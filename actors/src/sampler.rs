//! TelemetrySampler: every few seconds, measures the backlog that only Postgres knows —
//! processor lag (age of the oldest unconsumed `gw_jobs` row) and, per destination, waiting
//! jobs, the age of the oldest one and the DLQ size — and sets those gauges. It also
//! registers the series that must exist before any traffic (restarts per actor, each
//! destination's retries, circuit state, …) so dashboards and alerts see zeros, not gaps.
//! One sample at a time, the next one `interval` after the previous ended, or later when
//! sampling is slow: it waits at least `cost_factor` times the last sample's duration, so
//! the probes never take more than 1/`cost_factor` of a Postgres core even with a backlog of
//! millions of jobs (the counts walk the backlog's index range: ~130 ms per million rows
//! here). A failed sample is counted and logged and the next one comes after `interval`.
//! It only reads: it never writes to Postgres and never messages another actor.

use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::processor::RouterRegistry;
use crate::store::Store;
use crate::telemetry as t;

/// Sampler settings.
#[derive(Debug, Clone)]
pub struct TelemetrySamplerConfig {
    /// Time between the end of a backlog sample and the start of the next.
    pub interval: Duration,
    /// The wait is at least this many times the last sample's duration.
    pub cost_factor: u32,
}

impl Default for TelemetrySamplerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            cost_factor: 20,
        }
    }
}

/// The sampler actor (see the module comment).
pub struct TelemetrySampler {
    store: Store,
    routers: RouterRegistry,
    config: TelemetrySamplerConfig,
    sampling: bool,
}

impl TelemetrySampler {
    /// A sampler over `store` for the destinations that have a router in `routers` (read
    /// at every sample, so destinations added or removed later are followed).
    pub fn new(store: Store, routers: RouterRegistry, config: TelemetrySamplerConfig) -> Self {
        Self {
            store,
            routers,
            config,
            sampling: false,
        }
    }

    fn destinations(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .routers
            .read()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    fn sample(&mut self, ctx: &mut Context<Self>) {
        if self.sampling {
            return;
        }
        self.sampling = true;
        let destinations = self.destinations();
        for d in &destinations {
            t::register_destination_series(d);
        }
        let store = self.store.clone();
        let started = Instant::now();
        let fut = async move {
            let lag = store.processor_lag_seconds().await?;
            let backlog = store.destination_backlog(&destinations).await?;
            Ok::<_, crate::store::StoreError>((lag, backlog))
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.sampling = false;
            let took = started.elapsed();
            metrics::histogram!(t::TELEMETRY_SAMPLE_DURATION_SECONDS).record(took.as_secs_f64());
            // A failed sample's duration is waiting for Postgres, not load on it: retry at
            // the normal pace so the gauges recover soon after Postgres does.
            let wait = match &result {
                Ok(_) => took.saturating_mul(act.config.cost_factor),
                Err(_) => Duration::ZERO,
            }
            .max(act.config.interval);
            ctx.run_later(wait, |act, ctx| act.sample(ctx));
            match result {
                Ok((lag, backlog)) => {
                    metrics::counter!(t::TELEMETRY_SAMPLES_TOTAL, "outcome" => "ok").increment(1);
                    metrics::gauge!(t::PROCESSOR_LAG_SECONDS).set(lag);
                    for b in backlog {
                        let d = b.destination_id;
                        metrics::gauge!(t::ROUTER_PENDING_JOBS, "destination" => d.clone())
                            .set(b.pending as f64);
                        metrics::gauge!(t::ROUTER_LAG_SECONDS, "destination" => d.clone())
                            .set(b.oldest_pending_seconds.max(0.0));
                        metrics::gauge!(t::ROUTER_DLQ_JOBS, "destination" => d)
                            .set(b.dead_lettered as f64);
                    }
                }
                Err(e) => {
                    metrics::counter!(t::TELEMETRY_SAMPLES_TOTAL, "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(error = %e, "backlog sample failed; gauges keep their last values");
                }
            }
        }));
    }
}

impl Actor for TelemetrySampler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16);
        t::register_static_series();
        let _ = metrics::counter!(t::TELEMETRY_SAMPLES_TOTAL, "outcome" => "ok");
        let _ = metrics::counter!(t::TELEMETRY_SAMPLES_TOTAL, "outcome" => "failed");
        self.sample(ctx);
    }
}

impl Supervised for TelemetrySampler {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.sampling = false;
    }
}

crate::child_handlers!(TelemetrySampler, |s| (
    "telemetry_sampler",
    usize::from(s.sampling)
));
