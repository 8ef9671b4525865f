//! The admin API under `/admin`, behind `Authorization: Bearer <admin.token>` (disabled
//! when no token is configured): list and replay dead-lettered jobs, and explain where one
//! event is.

use actix_web::{web, HttpRequest, HttpResponse};
use keel_actors::messages::{ReplayTransformed, Wake};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::state::AppState;

pub(crate) fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let token = &state.config.admin.token;
    if token.is_empty() {
        return Err(ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "admin_disabled",
            "the admin API is disabled; set admin.token (KEEL_ADMIN__TOKEN) to enable it",
        ));
    }
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "invalid_admin_token",
            "admin API needs Authorization: Bearer <admin.token>",
        ))
    }
}

fn storage(e: keel_actors::store::StoreError, state: &AppState) -> ApiError {
    ApiError::unavailable(
        "storage_unavailable",
        e.to_string(),
        state.config.gateway.retry_after_secs,
    )
}

/// Postgres text cannot hold NUL, so no stored id or destination contains one: refuse it
/// as bad input rather than let the query fail.
fn no_nul(value: &str, what: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!("{what} contains a NUL character"),
        ));
    }
    Ok(())
}

/// Query of `GET /admin/dlq`.
#[derive(Deserialize)]
pub struct DlqQuery {
    destination: Option<String>,
    limit: Option<i64>,
}

/// `GET /admin/dlq?destination=…&limit=…`: dead-lettered jobs, oldest first.
pub async fn list_dlq(
    req: HttpRequest,
    query: web::Query<DlqQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    if let Some(d) = &query.destination {
        no_nul(d, "destination")?;
    }
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let jobs = state
        .store
        .list_dlq(query.destination.as_deref(), limit)
        .await
        .map_err(|e| storage(e, &state))?;
    // Secrets never leave: settings values, write keys, credential headers of requests.
    let index = state.sources();
    let redact = index.redactor();
    let jobs: Vec<Value> = jobs
        .into_iter()
        .map(|j| {
            let mut payload = serde_json::from_str::<Value>(&j.payload)
                .unwrap_or_else(|_| Value::String(j.payload.clone()));
            redact.payload(&mut payload);
            let mut row = serde_json::to_value(&j).unwrap_or_default();
            row["payload"] = payload;
            row["reason"] = json!(redact.text(&j.reason));
            row["last_response"] = json!(j.last_response.as_deref().map(|r| redact.text(r)));
            row
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"jobs": jobs, "count": jobs.len()})))
}

/// Body of `POST /admin/dlq/replay`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    destination: Option<String>,
    ids: Option<Vec<i64>>,
    #[serde(default)]
    all: bool,
}

/// `POST /admin/dlq/replay` with `{"destination"}`, `{"ids": […]}` (both may combine) or
/// `{"all": true}`: moves the jobs back for delivery, order per key kept.
pub async fn replay_dlq(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let r: ReplayRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("replay body must be {{\"destination\"?, \"ids\"?, \"all\"?}}: {e}"),
        )
    })?;
    if let Some(d) = &r.destination {
        no_nul(d, "destination")?;
    }
    if r.destination.is_none() && r.ids.is_none() && !r.all {
        return Err(ApiError::bad_request(
            "missing_selector",
            "say what to replay: destination, ids, or all: true",
        ));
    }
    let moved = state
        .store
        .replay_dlq(r.destination.clone(), r.ids.clone())
        .await
        .map_err(|e| storage(e, &state))?;
    // Dead letters of the transform stage go through the destination's scripts again.
    let processor = match state.children.processor.read() {
        Ok(p) => p.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let retransformed = processor
        .send(ReplayTransformed {
            destination: r.destination.clone(),
            ids: r.ids,
        })
        .await
        .map_err(|e| ApiError::unavailable("processor_unavailable", e.to_string(), 1))?
        .map_err(|e| {
            ApiError::unavailable(
                "storage_unavailable",
                e,
                state.config.gateway.retry_after_secs,
            )
        })?;
    if let Ok(routers) = state.children.routers.read() {
        for (id, addr) in routers.iter() {
            if r.destination.as_ref().is_none_or(|d| d == id) {
                let _ = addr.try_send(Wake);
            }
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "replayed": moved + retransformed,
        "redelivered": moved,
        "retransformed": retransformed,
    })))
}

/// `GET /admin/events/{messageId}`: where that event is, per destination.
pub async fn explain(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let message_id = path.into_inner();
    no_nul(&message_id, "messageId")?;
    let index = state.sources();
    let sources = index.source_ids();
    let doc = state
        .store
        .explain(&message_id, &sources)
        .await
        .map_err(|e| storage(e, &state))?;
    let stored = doc["stored"].as_array().is_some_and(|a| !a.is_empty());
    if !stored
        && doc["pending"].as_array().is_none_or(Vec::is_empty)
        && doc["dead_lettered"].as_array().is_none_or(Vec::is_empty)
    {
        return Err(ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "unknown_event",
            format!("no event with messageId {message_id:?} in the dedup window"),
        ));
    }
    let processed = doc["stored"]
        .as_array()
        .is_some_and(|a| a.iter().all(|s| s["processed"] == true));
    let mut destinations = Map::new();
    for r in doc["routing"].as_array().into_iter().flatten() {
        for d in r["routed"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            destinations.insert(d.into(), json!({"status": "delivered"}));
        }
        for (d, reason) in r["filtered"].as_object().into_iter().flatten() {
            destinations.insert(d.clone(), json!({"status": "filtered", "reason": reason}));
        }
    }
    for p in doc["pending"].as_array().into_iter().flatten() {
        let d = p["destination"].as_str().unwrap_or_default();
        destinations.insert(
            d.into(),
            json!({"status": "pending", "attempts": p["attempts"],
            "next_attempt_at": p["next_attempt_at"], "last_error": p["last_error"]}),
        );
    }
    for p in doc["dead_lettered"].as_array().into_iter().flatten() {
        let d = p["destination"].as_str().unwrap_or_default();
        destinations.insert(d.into(), json!({"status": "dead_lettered", "attempts": p["attempts"],
            "reason": p["reason"], "last_status": p["last_status"], "last_response": p["last_response"],
            "failed_at": p["failed_at"]}));
    }
    let mut answer = json!({
        "messageId": message_id,
        "stage": if !stored { "unknown" } else if processed { "processed" } else { "waiting_for_processor" },
        "destinations": destinations,
        "detail": doc,
    });
    index.redactor().value(&mut answer);
    Ok(HttpResponse::Ok().json(answer))
}

/// `POST /admin/reload`: re-reads the workspace file and applies it without a restart (the
/// same as SIGHUP). 200 with what changed; 400 with every problem if the file is invalid,
/// in which case the running configuration stays.
pub async fn reload(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    match crate::reload::reload(&state).await {
        Ok(report) => Ok(HttpResponse::Ok().json(json!({"status": "reloaded", "changes": report}))),
        Err(problems) => Ok(HttpResponse::BadRequest().json(json!({
            "error": "the workspace is invalid; the running configuration is unchanged",
            "code": "invalid_workspace",
            "problems": problems,
        }))),
    }
}

/// Body of `POST /admin/test/panic`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanicRequest {
    actor: String,
    destination: Option<String>,
}

/// `POST /admin/test/panic` with `{"actor": "gateway_writer" | "lease_keeper" | "processor" | "router" | "warehouse_uploader",
/// "destination": "…"}`: makes that actor panic (fault-injection tests). Exists only when
/// Keel was started with `KEEL_TEST_HOOKS=1`; 404 otherwise.
pub async fn inject_panic(
    req: HttpRequest,
    body: web::Json<PanicRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    use keel_actors::messages::InjectPanic;
    let not_found =
        |what: String| ApiError::new(actix_web::http::StatusCode::NOT_FOUND, "not_found", what);
    if !state.test_hooks {
        return Err(not_found(
            "test hooks are off (start with KEEL_TEST_HOOKS=1)".into(),
        ));
    }
    authorize(&req, &state)?;
    let dest = body.destination.clone().unwrap_or_default();
    let sent = match body.actor.as_str() {
        "gateway_writer" => {
            state.children.gateway_writer().do_send(InjectPanic);
            true
        }
        "lease_keeper" => state
            .children
            .lease_keeper()
            .map(|k| k.do_send(InjectPanic))
            .is_some(),
        "processor" => state
            .children
            .processor
            .read()
            .map(|p| p.do_send(InjectPanic))
            .is_ok(),
        "router" => state
            .children
            .routers
            .read()
            .ok()
            .and_then(|r| r.get(&dest).map(|a| a.do_send(InjectPanic)))
            .is_some(),
        "warehouse_uploader" => state
            .children
            .warehouses
            .read()
            .ok()
            .and_then(|w| w.get(&dest).map(|a| a.do_send(InjectPanic)))
            .is_some(),
        other => {
            return Err(ApiError::bad_request(
                "invalid_actor",
                format!("actor {other:?} is not gateway_writer, lease_keeper, processor, router or warehouse_uploader"),
            ))
        }
    };
    if !sent {
        return Err(not_found(format!(
            "no running {} for destination {dest:?}",
            body.actor
        )));
    }
    Ok(HttpResponse::Ok().json(json!({"panicked": body.actor, "destination": body.destination})))
}
