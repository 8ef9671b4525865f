//! Destinations written as scripts: `transformer-scripts/destinations/<name>/transform.js`
//! exports `process(event, destination)` and returns request descriptions (`method`,
//! `endpoint`, `headers`, `params`, `body` with `JSON`, `JSON_ARRAY`, `FORM` or `XML`), an
//! array of them, or throws an error with a `status`. The processor runs the script once
//! per batch; each request becomes an `rt_jobs` payload the shared HTTP sender delivers.
//! A 4xx (or status-less) error dead-letters the event; a 5xx or 429 error stores the event
//! itself, and its router runs the script again at delivery time, so the router's retry
//! policy (backoff, attempts, DLQ) applies.
//!
//! A script may also export `batch(requests, destination)`: at delivery time the router
//! hands it up to `maxBatchSize` stored requests (one per event, never two of one user)
//! and it answers `[{ request, events: [indices] }]`, requests that each cover several
//! events. An optional `batchResponse(response, requests, destination)` reads the answer to
//! one such request and says per event what happened (`{ status, error }` or null for "as
//! the HTTP status says"), so a partial failure retries or dead-letters only its events.
//! Optional exports `maxBatchSize` and `maxBatchBytes` are the API's limits; the
//! destination's config may lower them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::batch::{self, BatchConfig, BatchLimits};
use super::http::{self, DeliveryRequest};
use super::{BuildEnv, ConfigError, Delivery, DeliveryOutcome, Failure, Mapping, TransformError};
use crate::transform::{
    CallError, CallItem, CallResults, ItemResult, Libraries, Script, ScriptError, ScriptKind,
    TransformPool,
};
use crate::workspace;

/// Kind name reported for every script-backed destination.
pub const KIND: &str = "SCRIPT";

/// Payload key of an event whose script asked for a retry (5xx).
const DEFERRED: &str = "keelDeferredEvent";

/// A destination backed by a script.
pub struct ScriptDestination {
    script: Arc<Script>,
    pool: Option<Arc<TransformPool>>,
    client: http::HttpClient,
    /// The second argument of `process`: RudderStack's destination object.
    destination: Value,
    /// The destination's batch keys.
    batch_settings: BatchConfig,
    /// What the script exports for batching, asked once.
    exports: tokio::sync::OnceCell<Exports>,
    /// Until when (Unix ms) the processor leaves this destination's mapping to its router,
    /// after the script missed the mapping deadline.
    slow_until_ms: std::sync::atomic::AtomicI64,
}

/// How long a script that missed the mapping deadline is left to its router.
const SLOW_FOR: Duration = Duration::from_secs(60);

/// A script's optional exports (its `describe` answer).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exports {
    /// It exports `batch`.
    #[serde(default)]
    pub batch: bool,
    /// It exports `batchResponse`.
    #[serde(default)]
    pub batch_response: bool,
    /// Its `maxBatchSize`.
    #[serde(default)]
    pub max_batch_size: Option<f64>,
    /// Its `maxBatchBytes`.
    #[serde(default)]
    pub max_batch_bytes: Option<f64>,
}

/// One request `batch()` returned.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchedRequest {
    /// What to send.
    pub request: DeliveryRequest,
    /// Indices (into the requests given) of the events it covers.
    pub events: Vec<usize>,
}

/// What `batchResponse` said about one event.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventAnswer {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

impl ScriptDestination {
    /// Loads the script of folder `folder` for `dest`.
    pub fn new(
        dest: &workspace::Destination,
        folder: &str,
        path: &Path,
        env: &BuildEnv,
        libraries: &Arc<Libraries>,
    ) -> Result<Self, ConfigError> {
        let script = Script::load(folder, path, ScriptKind::Destination, libraries.clone())
            .map_err(|problem| ConfigError {
                destination: dest.id.clone(),
                field: "destinationDefinition.name".into(),
                problem,
            })?;
        let def = &dest.destination_definition;
        let destination = json!({
            "ID": dest.id,
            "Name": dest.name,
            "Enabled": dest.enabled,
            "Config": dest.config,
            "DestinationDefinition": {
                "Name": def.name,
                "DisplayName": def.display_name,
                "Config": def.config,
            },
        });
        Ok(Self {
            script: Arc::new(script),
            pool: env.pool.clone(),
            client: crate::outbound::client(&env.http),
            destination,
            batch_settings: BatchConfig::from_config(&dest.config),
            exports: tokio::sync::OnceCell::new(),
            slow_until_ms: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// The script's optional exports (asked from an isolate once; none without a pool).
    pub async fn exports(&self) -> Exports {
        self.exports
            .get_or_init(|| async {
                let Some(pool) = &self.pool else {
                    return Exports::default();
                };
                match pool
                    .call_export(&self.script, "describe", &json!([]), None)
                    .await
                {
                    Ok(out) => serde_json::from_value(out.value).unwrap_or_default(),
                    Err(e) => {
                        tracing::warn!(script = %self.script.name, error = %e, "cannot read the script's exports; delivering one event per request");
                        Exports::default()
                    }
                }
            })
            .await
            .clone()
    }

    /// Runs `batch(requests, destination)`: the requests to send and the events each
    /// covers, checked (every index in range and covered exactly once).
    pub async fn batch(&self, requests: &[Value]) -> Result<Vec<BatchedRequest>, ScriptFailure> {
        let pool = self.pool.as_ref().ok_or(ScriptFailure::Unavailable)?;
        let out = pool
            .call_export(
                &self.script,
                "batch",
                &json!([requests]),
                Some(&self.destination),
            )
            .await
            .map_err(|e| ScriptFailure::from_call(&self.script.name, "batch", e))?;
        let name = &self.script.name;
        let invalid = |problem: String| {
            ScriptFailure::Abort(format!(
                "destination script {name}: batch() returned {problem}"
            ))
        };
        let batched: Vec<BatchedRequest> = match out.value {
            Value::Null => Vec::new(),
            v => serde_json::from_value(v)
                .map_err(|e| invalid(format!("something else than [{{request, events}}]: {e}")))?,
        };
        let mut seen = vec![false; requests.len()];
        for b in &batched {
            for &i in &b.events {
                match seen.get_mut(i) {
                    None => return Err(invalid(format!("event index {i} of {}", requests.len()))),
                    Some(true) => return Err(invalid(format!("event {i} twice"))),
                    Some(s) => *s = true,
                }
            }
        }
        Ok(batched)
    }

    /// Runs `batchResponse(answer, requests, destination)`: one outcome per covered event,
    /// `None` where the script leaves it to the HTTP status.
    pub async fn batch_response(
        &self,
        answer: &http::Answer,
        covered: &[&Value],
    ) -> Result<Vec<Option<DeliveryOutcome>>, ScriptFailure> {
        let pool = self.pool.as_ref().ok_or(ScriptFailure::Unavailable)?;
        let body = serde_json::from_str::<Value>(&answer.body)
            .unwrap_or_else(|_| Value::String(answer.body.clone()));
        let response = json!({"status": answer.status, "headers": answer.headers, "body": body});
        let out = pool
            .call_export(
                &self.script,
                "batchResponse",
                &json!([response, covered]),
                Some(&self.destination),
            )
            .await
            .map_err(|e| ScriptFailure::from_call(&self.script.name, "batchResponse", e))?;
        let answers: Vec<Option<EventAnswer>> = match out.value {
            Value::Null => return Ok(vec![None; covered.len()]),
            v => serde_json::from_value(v).map_err(|e| {
                ScriptFailure::Abort(format!(
                    "destination script {}: batchResponse() must return one {{status, error}} or null per event: {e}",
                    self.script.name
                ))
            })?,
        };
        if answers.len() != covered.len() {
            return Err(ScriptFailure::Abort(format!(
                "destination script {}: batchResponse() returned {} answers for {} events",
                self.script.name,
                answers.len(),
                covered.len()
            )));
        }
        let mut kept = answer.body.clone();
        http::truncate_at_char(&mut kept, 1024);
        Ok(answers
            .into_iter()
            .map(|a| {
                let a = a?;
                let status = a.status?;
                let retry_after = a
                    .retry_after_ms
                    .map(Duration::from_millis)
                    .or(answer.retry_after);
                let mut outcome = http::outcome_of(status, kept.clone(), retry_after);
                if let (Some(error), DeliveryOutcome::Retry(f) | DeliveryOutcome::Abort(f)) =
                    (a.error, &mut outcome)
                {
                    f.error = error;
                }
                Some(outcome)
            })
            .collect())
    }

    /// Delivers a batch the router formed: deferred events one by one, the rest through
    /// `batch()`, each resulting request sent (concurrently: they cover different users)
    /// and its events' outcomes read from `batchResponse()` or the status.
    async fn deliver_batched(&self, payloads: &[Arc<str>]) -> Vec<DeliveryOutcome> {
        let mut outcomes: Vec<Option<DeliveryOutcome>> = vec![None; payloads.len()];
        let mut requests = Vec::new();
        let mut positions = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            match serde_json::from_str::<Value>(p) {
                Ok(v) if v.get(DEFERRED).is_none() => {
                    requests.push(v);
                    positions.push(i);
                }
                Ok(v) => outcomes[i] = Some(self.deliver(&v).await),
                Err(e) => {
                    outcomes[i] = Some(DeliveryOutcome::Abort(Failure {
                        error: format!("stored payload is not JSON: {e}"),
                        ..Failure::default()
                    }))
                }
            }
        }
        if !requests.is_empty() {
            let per_request = self.send_batched(&requests).await;
            for (slot, outcome) in positions.into_iter().zip(per_request) {
                outcomes[slot] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    DeliveryOutcome::Abort(Failure {
                        error: "no outcome".into(),
                        ..Failure::default()
                    })
                })
            })
            .collect()
    }

    /// Outcomes, one per request of `requests` (the stored per-event requests).
    async fn send_batched(&self, requests: &[Value]) -> Vec<DeliveryOutcome> {
        let name = &self.script.name;
        let batched = match self.batch(requests).await {
            Ok(b) => b,
            Err(f) => return vec![f.outcome(); requests.len()],
        };
        let with_response = self.exports().await.batch_response;
        let sends = batched.iter().map(|b| async move {
            let text = match serde_json::to_string(&b.request) {
                Ok(t) => t,
                Err(e) => {
                    return vec![
                        DeliveryOutcome::Abort(Failure {
                            error: format!("cannot encode a batched request: {e}"),
                            ..Failure::default()
                        });
                        b.events.len()
                    ]
                }
            };
            if !with_response {
                return vec![http::send_text(&self.client, &text).await; b.events.len()];
            }
            let answer = match http::exchange(&self.client, &text).await {
                Ok(a) => a,
                Err(outcome) => return vec![outcome; b.events.len()],
            };
            let covered: Vec<&Value> = b.events.iter().map(|&i| &requests[i]).collect();
            let status_outcome = answer.outcome();
            match self.batch_response(&answer, &covered).await {
                Ok(per_event) => per_event
                    .into_iter()
                    .map(|o| o.unwrap_or_else(|| status_outcome.clone()))
                    .collect(),
                Err(f) => {
                    tracing::warn!(script = %name, "batchResponse failed: {}", f.message());
                    vec![status_outcome; b.events.len()]
                }
            }
        });
        let answers = futures::future::join_all(sends).await;
        let mut outcomes: Vec<Option<DeliveryOutcome>> = vec![None; requests.len()];
        for (b, per_event) in batched.iter().zip(answers) {
            for (&i, o) in b.events.iter().zip(per_event) {
                outcomes[i] = Some(o);
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    DeliveryOutcome::Abort(Failure {
                        error: format!("destination script {name}: batch() left this event out"),
                        ..Failure::default()
                    })
                })
            })
            .collect()
    }

    /// RudderStack's destination object the script gets as its last argument.
    pub fn rudder_destination(&self) -> &Value {
        &self.destination
    }

    /// Runs `process(event, destination)` over `events`: one result per event.
    pub async fn process(
        &self,
        events: &[&Map<String, Value>],
    ) -> Result<Vec<ItemResult>, CallError> {
        self.run(events).await
    }

    async fn run(&self, events: &[&Map<String, Value>]) -> Result<Vec<ItemResult>, CallError> {
        let pool = self.pool.as_ref().ok_or(CallError::Unavailable)?;
        let meta = Value::Null;
        let items: Vec<CallItem<'_>> = events
            .iter()
            .map(|event| CallItem {
                event,
                metadata: &meta,
            })
            .collect();
        let out = pool
            .call(&self.script, &meta, &items, Some(&self.destination))
            .await?;
        match out.results {
            CallResults::PerEvent(results) => Ok(results),
            CallResults::Batch(_) => Err(CallError::InvalidOutput(
                "a destination script answers per event".into(),
            )),
        }
    }
}

/// Why a script's batching export failed.
#[derive(Debug, Clone)]
pub enum ScriptFailure {
    /// Worth retrying (a 5xx status, the pool unavailable).
    Retry(String),
    /// For good (threw without a 5xx status, invalid output).
    Abort(String),
    /// No isolate pool (validation only).
    Unavailable,
}

impl ScriptFailure {
    fn from_call(script: &str, entry: &str, e: CallError) -> Self {
        match e {
            CallError::Unavailable => Self::Unavailable,
            CallError::Exception(e) if retryable(&e) => Self::Retry(format!(
                "destination script {script}: {entry}(): {}",
                e.message
            )),
            e => Self::Abort(format!("destination script {script}: {entry}(): {e}")),
        }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        match self {
            Self::Retry(m) | Self::Abort(m) => m,
            Self::Unavailable => "the transformation pool is unavailable",
        }
    }

    fn outcome(&self) -> DeliveryOutcome {
        let failure = Failure {
            error: self.message().to_owned(),
            ..Failure::default()
        };
        match self {
            Self::Abort(_) => DeliveryOutcome::Abort(failure),
            _ => DeliveryOutcome::Retry(failure),
        }
    }
}

/// The request descriptions a script returned, checked and serialised.
fn requests(script: &str, out: Vec<Map<String, Value>>) -> Result<Vec<String>, TransformError> {
    out.into_iter()
        .map(|r| {
            let r = Value::Object(r);
            DeliveryRequest::deserialize(&r)
                .map_err(|e| {
                    TransformError::Failed(format!(
                        "destination script {script} returned an invalid request: {e}"
                    ))
                })
                .and_then(|req| {
                    serde_json::to_string(&req).map_err(|e| TransformError::Failed(e.to_string()))
                })
        })
        .collect()
}

/// A thrown error's message without its `Name: ` prefix.
fn strip_name(message: &str) -> &str {
    message
        .split_once(": ")
        .filter(|(name, _)| name.ends_with("Error"))
        .map_or(message, |(_, rest)| rest)
}

fn retryable(e: &ScriptError) -> bool {
    e.status.is_some_and(|s| s >= 500 || s == 429)
}

impl Mapping for ScriptDestination {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn script(&self) -> Option<&Arc<Script>> {
        Some(&self.script)
    }

    fn transform(&self, _event: &Map<String, Value>) -> Result<Vec<Value>, TransformError> {
        Err(TransformError::Failed(
            "a script destination maps events in batches".into(),
        ))
    }

    fn transform_batch<'a>(
        &'a self,
        events: &'a [&'a Map<String, Value>],
    ) -> BoxFuture<'a, Vec<Result<Vec<String>, TransformError>>> {
        Box::pin(async move {
            let name = &self.script.name;
            // A script that is slow to map (a loop, a hung lookup) must not hold up the
            // processor, which serves every destination: its events are stored unmapped
            // and its own router maps them at delivery, within its share of the isolates.
            let defer_all = |why: &str| -> Vec<Result<Vec<String>, TransformError>> {
                events
                    .iter()
                    .map(|event| Ok(vec![json!({ DEFERRED: event, "error": why }).to_string()]))
                    .collect()
            };
            let now_ms = chrono::Utc::now().timestamp_millis();
            let order = std::sync::atomic::Ordering::Relaxed;
            if self.slow_until_ms.load(order) > now_ms {
                return defer_all("mapped at delivery: the script was slow to map recently");
            }
            let deadline = self
                .pool
                .as_ref()
                .map_or(Duration::from_secs(1), |p| p.config().mapping_deadline);
            let answer = match tokio::time::timeout(deadline, self.run(events)).await {
                Ok(answer) => answer,
                Err(_) => {
                    let until = now_ms + SLOW_FOR.as_millis() as i64;
                    self.slow_until_ms.store(until, order);
                    tracing::warn!(script = %name, deadline = ?deadline,
                        "destination script missed the mapping deadline; its router maps its events for the next minute");
                    return defer_all("mapped at delivery: the script missed the mapping deadline");
                }
            };
            match answer {
                Err(e) => events
                    .iter()
                    .map(|_| {
                        Err(TransformError::Failed(format!(
                            "destination script {name}: {e}"
                        )))
                    })
                    .collect(),
                Ok(results) => results
                    .into_iter()
                    .zip(events)
                    .map(|(r, event)| match r {
                        ItemResult::Out(out) => requests(name, out),
                        ItemResult::Failed(e) if e.drop => Err(TransformError::Unsupported(
                            format!("{name}: {}", strip_name(&e.message)),
                        )),
                        ItemResult::Failed(e) if retryable(&e) => Ok(vec![
                            json!({ DEFERRED: event, "error": e.message }).to_string(),
                        ]),
                        ItemResult::Failed(e) => Err(TransformError::Failed(format!(
                            "destination script {name}: {e}"
                        ))),
                    })
                    .collect(),
            }
        })
    }
}

impl Delivery for ScriptDestination {
    fn batching(&self) -> BoxFuture<'_, Option<BatchLimits>> {
        Box::pin(async move {
            let exports = self.exports().await;
            if !exports.batch {
                return None;
            }
            let positive = |n: Option<f64>| n.filter(|n| *n >= 1.0).map(|n| n as usize);
            let max_events = positive(exports.max_batch_size)
                .unwrap_or(batch::DEFAULT_MAX_EVENTS)
                .min(batch::LIMIT_MAX_EVENTS);
            let max_bytes = positive(exports.max_batch_bytes).unwrap_or(batch::DEFAULT_MAX_BYTES);
            // The destination may lower the API's limits, not raise them.
            let own = BatchConfig {
                max_events: self.batch_settings.max_events.map(|n| n.min(max_events)),
                max_bytes: self.batch_settings.max_bytes.map(|n| n.min(max_bytes)),
                ..self.batch_settings
            };
            own.limits(max_events, max_bytes)
        })
    }

    fn deliver_batch<'a>(
        &'a self,
        payloads: &'a [Arc<str>],
    ) -> BoxFuture<'a, Vec<DeliveryOutcome>> {
        Box::pin(self.deliver_batched(payloads))
    }

    fn deliver<'a>(&'a self, payload: &'a Value) -> BoxFuture<'a, DeliveryOutcome> {
        Box::pin(async move {
            let Some(Value::Object(event)) = payload.get(DEFERRED) else {
                return http::send(&self.client, payload).await;
            };
            // The script asked for a retry when it mapped this event: map it again now.
            let name = &self.script.name;
            let failure = |error: String, status: Option<u16>| Failure {
                status,
                error,
                ..Failure::default()
            };
            let result = match self.run(&[event]).await {
                Err(CallError::Unavailable) => {
                    return DeliveryOutcome::Retry(failure(
                        "the transformation pool is unavailable".into(),
                        None,
                    ))
                }
                Err(e) => {
                    return DeliveryOutcome::Abort(failure(
                        format!("destination script {name}: {e}"),
                        None,
                    ))
                }
                Ok(mut results) => results.pop(),
            };
            let out = match result {
                Some(ItemResult::Out(out)) => out,
                Some(ItemResult::Failed(e)) if retryable(&e) => {
                    return DeliveryOutcome::Retry(failure(
                        format!("destination script {name}: {}", e.message),
                        e.status,
                    ))
                }
                Some(ItemResult::Failed(e)) => {
                    return DeliveryOutcome::Abort(failure(
                        format!("destination script {name}: {e}"),
                        e.status,
                    ))
                }
                None => Vec::new(),
            };
            let reqs = match requests(name, out) {
                Ok(r) => r,
                Err(e) => return DeliveryOutcome::Abort(failure(e.to_string(), None)),
            };
            for req in &reqs {
                let outcome = http::send_text(&self.client, req).await;
                if outcome != DeliveryOutcome::Delivered {
                    return outcome;
                }
            }
            DeliveryOutcome::Delivered
        })
    }
}
