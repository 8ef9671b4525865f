//! `GET /admin/connections`: each source and its destinations with what the console's
//! Connections page shows — enabled state, kind, deliveries by outcome (counters: the page
//! turns them into rates), pending jobs, DLQ size, circuit state, in-flight deliveries and
//! the last error. The numbers come from this node's `/metrics` text (parsed, so both show
//! the same data) and the last error from the routers' latest failure, else the newest
//! dead letter.

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use keel_actors::telemetry as t;
use serde_json::{json, Value};

use super::admin::authorize;
use super::error::ApiError;
use super::state::AppState;

/// `destination → (metric[/outcome] → value)` from the Prometheus text.
fn by_destination(text: &str) -> HashMap<String, HashMap<String, f64>> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        return HashMap::new();
    };
    let wanted = [
        t::ROUTER_DELIVERIES_TOTAL,
        t::ROUTER_PENDING_JOBS,
        t::ROUTER_DLQ_JOBS,
        t::ROUTER_CIRCUIT_OPEN,
        t::ROUTER_IN_FLIGHT,
        t::ROUTER_LAG_SECONDS,
        t::WAREHOUSE_EVENTS_LOADED_TOTAL,
        t::WAREHOUSE_PENDING_EVENTS,
    ];
    let mut out: HashMap<String, HashMap<String, f64>> = HashMap::new();
    for s in scrape.samples {
        if !wanted.contains(&s.metric.as_str()) {
            continue;
        }
        let Some(dest) = s.labels.get("destination") else {
            continue;
        };
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let key = match s.labels.get("outcome") {
            Some(o) => format!("{}/{o}", s.metric),
            None => s.metric.clone(),
        };
        *out.entry(dest.to_owned())
            .or_default()
            .entry(key)
            .or_default() += value;
    }
    out
}

/// `GET /admin/connections`.
pub async fn connections(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let metrics = by_destination(&state.prometheus.render());
    let failures = state.children.live.last_failures();
    let index = state.sources();
    let ids: Vec<String> = index
        .all_sources()
        .flat_map(|s| s.destinations.iter().map(|d| d.id.clone()))
        .collect();
    let newest_dead = state
        .store
        .newest_dead_letters_of(ids)
        .await
        .unwrap_or_default();
    let num = |m: Option<&HashMap<String, f64>>, k: &str| -> f64 {
        m.and_then(|m| m.get(k)).copied().unwrap_or(0.0)
    };
    let sources: Vec<Value> = index
        .all_sources()
        .map(|s| {
            let destinations: Vec<Value> = s
                .destinations
                .iter()
                .map(|d| {
                    let m = metrics.get(&d.id);
                    let last_error = failures
                        .get(&d.id)
                        .map(|f| json!({"error": f.error, "status": f.status, "at": f.at}))
                        .or_else(|| {
                            newest_dead.get(&d.id).map(|(reason, at)| {
                                json!({"error": index.redactor().text(reason), "status": null, "at": at})
                            })
                        });
                    json!({
                        "id": d.id,
                        "name": d.name,
                        "kind": d.destination_definition.name,
                        "enabled": d.enabled,
                        "delivered_total": num(m, &format!("{}/delivered", t::ROUTER_DELIVERIES_TOTAL)),
                        "retried_total": num(m, &format!("{}/retry", t::ROUTER_DELIVERIES_TOTAL)),
                        "dead_lettered_total": num(m, &format!("{}/dead", t::ROUTER_DELIVERIES_TOTAL)),
                        "warehouse_loaded_total": num(m, t::WAREHOUSE_EVENTS_LOADED_TOTAL),
                        "pending": num(m, t::ROUTER_PENDING_JOBS) + num(m, t::WAREHOUSE_PENDING_EVENTS),
                        "dlq": num(m, t::ROUTER_DLQ_JOBS),
                        "in_flight": num(m, t::ROUTER_IN_FLIGHT),
                        "lag_seconds": num(m, t::ROUTER_LAG_SECONDS),
                        "circuit": if num(m, t::ROUTER_CIRCUIT_OPEN) > 0.0 { "open" } else { "closed" },
                        "last_error": last_error,
                    })
                })
                .collect();
            json!({"id": s.id, "name": s.name, "enabled": s.enabled, "destinations": destinations})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"sources": sources, "at": chrono::Utc::now()})))
}
