//! Operational endpoints: `/health` (process alive), `/ready` (Postgres reachable,
//! migrations done, actors answering, not draining) and `/metrics` (Prometheus text).

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::state::AppState;

/// `GET /health`: 200 while the process runs.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /ready`: 200 when the service can accept and store events, else 503 naming why.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let not_ready = |reason: String| {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(json!({"error": reason, "code": "not_ready"}))
    };
    if state.draining.load(Ordering::Relaxed) {
        return not_ready("shutting down".into());
    }
    if !state.children.healthy.load(Ordering::Relaxed) {
        return not_ready("an actor is not answering its heartbeat".into());
    }
    if let Err(e) = state.store.ping().await {
        return not_ready(format!("postgres: {e}"));
    }
    HttpResponse::Ok().json(json!({"status": "ready"}))
}

/// `GET /metrics`: every Keel metric in Prometheus text format (process and pool gauges
/// are read just before rendering).
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    crate::process_stats::record(&state.store);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.prometheus.render())
}
