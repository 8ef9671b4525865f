//! The Segment tracking API handlers: `POST /v1/{identify,track,page,screen,group,alias}`
//! (one event), `/v1/batch` and `/v1/import` (many). A request is authenticated, read under
//! the size caps, validated and normalised, then handed to the GatewayWriter; the answer is
//! 200 only after its `gw_jobs` row committed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use tokio::sync::oneshot;

use keel_actors::messages::{Ingest, IngestError, IngestPart};
use keel_actors::partition::partition_of;
use keel_actors::telemetry as t;

use super::auth;
use super::body::{check_headers, read_body};
use super::error::ApiError;
use super::event::Event;
use super::normalize::RequestInfo;
use super::parse;
use super::state::AppState;

pub use super::parse::Endpoint;

/// Handles one ingest request and records its outcome in metrics.
pub async fn ingest(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    endpoint: Endpoint,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let mut source = None;
    let result = ingest_inner(&req, payload, &state, endpoint, &mut source).await;
    let status = match &result {
        Ok(_) => "200".to_string(),
        Err(e) => e.status.as_u16().to_string(),
    };
    // `none` when the request was not authenticated (never the write key itself).
    let source = source.map_or_else(|| "none".to_owned(), |s: Arc<str>| s.to_string());
    metrics::counter!(t::GATEWAY_REQUESTS_TOTAL, "endpoint" => endpoint.label(), "outcome" => status, "source" => source)
        .increment(1);
    metrics::histogram!(t::GATEWAY_REQUEST_DURATION_SECONDS, "endpoint" => endpoint.label())
        .record(started.elapsed().as_secs_f64());
    result.map(|()| HttpResponse::Ok().json(serde_json::json!({"success": true})))
}

async fn ingest_inner(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    endpoint: Endpoint,
    source_seen: &mut Option<Arc<str>>,
) -> Result<(), ApiError> {
    let limits = &state.config.gateway;
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable(
            "shutting_down",
            "server is shutting down; retry against another instance",
            limits.retry_after_secs,
        ));
    }
    let encoding = check_headers(req.headers())?;
    // Authenticate from the header before reading the body, so unauthenticated floods are cheap.
    // Browsers' `sendBeacon` cannot set headers: their SDKs put the key in the query.
    let header_key = match auth::basic_write_key(req.headers())? {
        Some(key) => Some(key),
        None => auth::query_write_key(req.query_string()),
    };
    let header_source = match header_key {
        Some(key) => Some(state.sources().authenticate(&key)?),
        None => None,
    };
    let body = read_body(
        req.headers(),
        payload,
        encoding,
        limits.max_request_bytes,
        std::time::Duration::from_secs(state.config.server.read_timeout_secs),
    )
    .await?;
    let text = parse::body_str(&body)?;
    let request = RequestInfo::new(
        Utc::now(),
        req.connection_info().realip_remote_addr().map(strip_port),
    );

    let limits = parse::Limits {
        max_event_bytes: limits.max_event_bytes,
    };
    let body = parse::parse_body(endpoint, text, &limits)?;
    let source = resolve_source(header_source, body.write_key(), state)?;
    *source_seen = Some(source.clone());
    let parsed = body.normalize(&limits, &request)?;
    commit(state, source, &request, parsed).await
}

fn resolve_source(
    header_source: Option<Arc<str>>,
    body_key: Option<String>,
    state: &AppState,
) -> Result<Arc<str>, ApiError> {
    match (header_source, body_key) {
        (Some(source), _) => Ok(source),
        (None, Some(key)) => state.sources().authenticate(&key),
        (None, None) => Err(ApiError::unauthorized(
            "missing_write_key",
            "no write key: send HTTP Basic auth with the write key as user, or a writeKey field",
        )),
    }
}

fn strip_port(addr: &str) -> String {
    // "1.2.3.4:5678" → "1.2.3.4"; "[::1]:5678" → "::1"; a bare address stays as it is.
    match addr.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip().to_string(),
        Err(_) => addr.to_owned(),
    }
}

/// Takes `n` events from the source's budget, or answers 429 with how long to wait (413
/// when one request holds more events than the burst allows at all).
fn check_rate(
    limiter: &super::state::SourceRateLimiter,
    source: &Arc<str>,
    n: usize,
    limits: &crate::config::GatewaySettings,
) -> Result<(), ApiError> {
    let Some(n32) = u32::try_from(n).ok().and_then(std::num::NonZeroU32::new) else {
        return Ok(());
    };
    match limiter.check_key_n(source, n32) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => {
            use governor::clock::{Clock, DefaultClock};
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            metrics::counter!(t::GATEWAY_RATE_LIMITED_TOTAL, "source" => source.to_string())
                .increment(1);
            Err(ApiError::rate_limited(
                format!(
                    "source {source} is over its limit of {} events/s; retry later",
                    limits.rate_limit_events_per_sec
                ),
                wait.as_secs_f64().ceil().max(1.0) as u64,
            ))
        }
        Err(_) => Err(ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "over_rate_burst",
            format!(
                "{n} events in one request exceed this source's burst of {}; send smaller batches",
                limits.effective_rate_burst()
            ),
        )),
    }
}

/// Groups a request's events by partition (request order kept within each, by their
/// ordering keys) and encodes each group as one JSON array.
fn split_by_partition(
    events: &[Event<'_>],
    message_ids: Vec<String>,
    ordering_keys: &[String],
    partitions: u32,
) -> Result<Vec<IngestPart>, serde_json::Error> {
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    if partitions <= 1 {
        return Ok(vec![IngestPart {
            partition: 0,
            event_count: count(events.len()),
            payload: serde_json::to_string(events)?,
            message_ids,
        }]);
    }
    /// A partition's events and their messageIds.
    type Group<'e, 'a> = (i32, Vec<&'e Event<'a>>, Vec<String>);
    let mut groups: Vec<Group<'_, '_>> = Vec::new();
    for ((event, id), key) in events.iter().zip(message_ids).zip(ordering_keys) {
        let p = partition_of(key, partitions);
        match groups.iter_mut().find(|g| g.0 == p) {
            Some(g) => {
                g.1.push(event);
                g.2.push(id);
            }
            None => groups.push((p, vec![event], vec![id])),
        }
    }
    groups
        .into_iter()
        .map(|(partition, evs, ids)| {
            Ok(IngestPart {
                partition,
                event_count: count(evs.len()),
                payload: serde_json::to_string(&evs)?,
                message_ids: ids,
            })
        })
        .collect()
}

async fn commit(
    state: &AppState,
    source: Arc<str>,
    request: &RequestInfo,
    parsed: parse::Events<'_>,
) -> Result<(), ApiError> {
    let events = parsed.events;
    let retry_after = state.config.gateway.retry_after_secs;
    if let Some(limiter) = &state.rate_limiter {
        check_rate(limiter, &source, events.len(), &state.config.gateway)?;
    }
    let parts = split_by_partition(
        &events,
        parsed.message_ids,
        &parsed.ordering_keys,
        state.config.cluster.partitions,
    )
    .map_err(|e| ApiError::bad_request("invalid_event", format!("event cannot be encoded: {e}")))?;
    let bytes: usize = parts.iter().map(|p| p.payload.len()).sum();
    let permits = bytes.div_ceil(1024).max(1) as u32;
    let Ok(permit) = state.queue.clone().try_acquire_many_owned(permits) else {
        return Err(ApiError::throttled(
            "ingest queue is full; retry after the indicated delay",
            retry_after,
        ));
    };
    metrics::gauge!(t::GATEWAY_QUEUE_BYTES).increment(bytes as f64);
    let queued_bytes = bytes as f64;
    let (reply, answer) = oneshot::channel();
    let msg = Ingest {
        source_id: source.clone(),
        received_at: request.received_at,
        parts,
        reply,
    };
    let sent = state.children.gateway_writer().try_send(msg);
    let result = match sent {
        Err(_) => Err(ApiError::throttled(
            "ingest queue is full; retry after the indicated delay",
            retry_after,
        )),
        Ok(()) => match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(IngestError::Unavailable(e))) => Err(ApiError::unavailable(
                "storage_unavailable",
                format!(
                    "event storage did not confirm the write, so the request is not \
                     acknowledged: {e}; retry it (a repeated messageId is dropped)"
                ),
                retry_after,
            )),
            Err(_) => Err(ApiError::unavailable(
                "storage_unavailable",
                "the writer stopped before storing the request; nothing was acknowledged",
                retry_after,
            )),
        },
    };
    metrics::gauge!(t::GATEWAY_QUEUE_BYTES).decrement(queued_bytes);
    drop(permit);
    // The console's live view: each stored event's text, written only while somebody
    // watches (and a tree for the few samples a second).
    let live = &state.children.live;
    if result.is_ok() {
        if live.sample_due(request.received_at) {
            if let Some(e) = events.first() {
                live.sample(&source, request.received_at, &e.to_map());
            }
        }
        if live.watched() {
            live.accepted(keel_actors::live::Accepted {
                source_id: source,
                received_at: request.received_at,
                events: events
                    .iter()
                    .filter_map(|e| serde_json::value::to_raw_value(e).ok())
                    .collect(),
            });
        }
    }
    result
}
