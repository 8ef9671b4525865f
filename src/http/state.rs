//! The state every HTTP handler shares ([`AppState`]: configuration, the write-key index,
//! the actor tree's addresses, the store, the metrics renderer, the ingest budget) and the
//! per-source rate limiter. Apart from the routes, so that what handlers and reloads read
//! does not depend on what serves them.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use actix::Addr;
use keel_actors::store::Store;
use keel_actors::supervisor::{Children, RootSupervisor};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use super::auth;
use crate::config::KeelSettings;

/// State every handler shares.
pub struct AppState {
    /// Effective configuration.
    pub config: KeelSettings,
    /// Write key lookup; replaced as a whole by a reload.
    pub sources: RwLock<Arc<auth::SourceIndex>>,
    /// Root of the actor tree (reloads go through it).
    pub root: Addr<RootSupervisor>,
    /// Actor addresses.
    pub children: Children,
    /// Database handle for readiness.
    pub store: Store,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Commit queue budget in KiB of payload; empty means 429.
    pub queue: Arc<Semaphore>,
    /// Set once shutdown began: ingest answers 503.
    pub draining: Arc<AtomicBool>,
    /// `KEEL_TEST_HOOKS=1` at start-up: enables `POST /admin/test/panic`.
    pub test_hooks: bool,
    /// Per-source event rate limiter (`gateway.rate_limit_events_per_sec`), if one is set.
    pub rate_limiter: Option<Arc<SourceRateLimiter>>,
    /// The JavaScript pool every routing table (start-up and reloads) runs scripts on.
    pub transforms: Arc<keel_actors::transform::TransformPool>,
}

/// GCRA limiter keyed by source id.
pub type SourceRateLimiter = governor::DefaultKeyedRateLimiter<Arc<str>>;

/// The limiter `gateway` asks for, if any.
pub fn source_rate_limiter(
    gateway: &crate::config::GatewaySettings,
) -> Option<Arc<SourceRateLimiter>> {
    let rate = std::num::NonZeroU32::new(gateway.rate_limit_events_per_sec)?;
    let burst = std::num::NonZeroU32::new(gateway.effective_rate_burst()).unwrap_or(rate);
    Some(Arc::new(governor::RateLimiter::keyed(
        governor::Quota::per_second(rate).allow_burst(burst),
    )))
}

impl AppState {
    /// The current write-key index.
    pub fn sources(&self) -> Arc<auth::SourceIndex> {
        match self.sources.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}
