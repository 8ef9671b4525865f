//! Destinations written as scripts: `transformer-scripts/destinations/<name>/transform.js`
//! exports `process(event, destination)` and returns request descriptions (`method`,
//! `endpoint`, `headers`, `params`, `body` with `JSON`, `JSON_ARRAY`, `FORM` or `XML`), an
//! array of them, or throws an error with a `status`. The processor runs the script once
//! per batch; each request becomes an `rt_jobs` payload the shared HTTP sender delivers.
//! A 4xx (or status-less) error dead-letters the event; a 5xx error stores the event
//! itself, and its router runs the script again at delivery time, so the router's retry
//! policy (backoff, attempts, DLQ) applies.

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::http::{self, DeliveryRequest};
use super::{BuildEnv, ConfigError, DeliveryOutcome, Destination, Failure, TransformError};
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
            client: http::client(&env.http),
            destination,
        })
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

/// The request descriptions a script returned, checked and serialised.
fn requests(script: &str, out: Vec<Map<String, Value>>) -> Result<Vec<String>, TransformError> {
    out.into_iter()
        .map(|r| {
            let r = Value::Object(r);
            DeliveryRequest::deserialize(&r)
                .map_err(|e| {
                    TransformError(format!(
                        "destination script {script} returned an invalid request: {e}"
                    ))
                })
                .and_then(|req| {
                    serde_json::to_string(&req).map_err(|e| TransformError(e.to_string()))
                })
        })
        .collect()
}

fn retryable(e: &ScriptError) -> bool {
    e.status.is_some_and(|s| s >= 500)
}

impl Destination for ScriptDestination {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn script(&self) -> Option<&Arc<Script>> {
        Some(&self.script)
    }

    fn transform(&self, _event: &Map<String, Value>) -> Result<Vec<Value>, TransformError> {
        Err(TransformError(
            "a script destination maps events in batches".into(),
        ))
    }

    fn transform_batch<'a>(
        &'a self,
        events: &'a [&'a Map<String, Value>],
    ) -> BoxFuture<'a, Vec<Result<Vec<String>, TransformError>>> {
        Box::pin(async move {
            let name = &self.script.name;
            match self.run(events).await {
                Err(e) => events
                    .iter()
                    .map(|_| Err(TransformError(format!("destination script {name}: {e}"))))
                    .collect(),
                Ok(results) => results
                    .into_iter()
                    .zip(events)
                    .map(|(r, event)| match r {
                        ItemResult::Out(out) => requests(name, out),
                        ItemResult::Failed(e) if retryable(&e) => Ok(vec![
                            json!({ DEFERRED: event, "error": e.message }).to_string(),
                        ]),
                        ItemResult::Failed(e) => {
                            Err(TransformError(format!("destination script {name}: {e}")))
                        }
                    })
                    .collect(),
            }
        })
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
                Err(e) => return DeliveryOutcome::Abort(failure(e.0, None)),
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
