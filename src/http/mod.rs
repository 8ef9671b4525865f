//! The HTTP surface: shared state, routes, and the handlers' modules (ingest, ops).

pub mod admin;
pub mod auth;
pub mod body;
pub mod error;
pub mod ingest;
pub mod normalize;
pub mod ops;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix_web::web;
use keel_actors::store::Store;
use keel_actors::supervisor::Children;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::config::KeelConfig;
use ingest::Endpoint;
use normalize::EventType;

/// State every handler shares.
pub struct AppState {
    /// Effective configuration.
    pub config: KeelConfig,
    /// Write key lookup.
    pub sources: auth::SourceIndex,
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
}

fn ingest_route(endpoint: Endpoint) -> actix_web::Route {
    web::post().to(
        move |req: actix_web::HttpRequest, payload: web::Payload, state: web::Data<AppState>| {
            ingest::ingest(req, payload, state, endpoint)
        },
    )
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for ty in [
        EventType::Identify,
        EventType::Track,
        EventType::Page,
        EventType::Screen,
        EventType::Group,
        EventType::Alias,
    ] {
        cfg.route(
            &format!("/v1/{}", ty.as_str()),
            ingest_route(Endpoint::Single(ty)),
        );
    }
    cfg.route("/v1/batch", ingest_route(Endpoint::Batch))
        .route("/v1/import", ingest_route(Endpoint::Import))
        .route("/health", web::get().to(ops::health))
        .route("/ready", web::get().to(ops::ready))
        .route("/metrics", web::get().to(ops::metrics))
        .route("/admin/dlq", web::get().to(admin::list_dlq))
        .route("/admin/dlq/replay", web::post().to(admin::replay_dlq))
        .route("/admin/events/{message_id}", web::get().to(admin::explain));
}
