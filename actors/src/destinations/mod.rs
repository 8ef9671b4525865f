//! Destination kinds behind two traits, one per side: [`Mapping`] (processor: a normalised
//! event becomes the payloads stored in `rt_jobs`, or `wh_jobs` rows) and [`Delivery`]
//! (router: a stored payload is sent). Batch-loaded kinds implement only [`Mapping`].
//! HTTP kinds describe their request in RudderStack's transformer response shape
//! ([`DeliveryRequest`]) and share one sender, so a router never knows a destination's API;
//! a JavaScript-backed kind only has to produce the same shape. Each kind is a module with
//! its config struct. Message-broker kinds (`REDIS`, `RABBITMQ`, `NATS`) share the helpers
//! in [`broker`] and store in each payload what their delivery needs (stream, routing key or
//! subject, and the body), so delivery parses no event.

pub mod batch;
pub mod broker;
pub mod catalogue;
pub mod http;
pub mod nats;
pub mod rabbitmq;
pub mod redis;
pub mod script;
pub mod settings;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

pub use crate::outbound::HttpConfig;
use crate::transform::{self, Libraries, TransformPool};

/// What happened to one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    /// Accepted by the destination (2xx).
    Delivered,
    /// Worth retrying: 429, 408, 5xx, timeouts, connection errors.
    Retry(Failure),
    /// Refused for good (other 4xx, invalid payload): dead-letter it.
    Abort(Failure),
}

/// Details of a failed attempt, kept in `rt_jobs.last_error` / `dlq_jobs`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Failure {
    /// HTTP status, if the destination answered.
    pub status: Option<u16>,
    /// What went wrong, for people.
    pub error: String,
    /// First 1 KB of the response body.
    pub body: String,
    /// The destination's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

/// Why a kind maps an event to nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    /// It cannot map it (bad input, a script error): sent to the DLQ with this reason.
    #[error("{0}")]
    Failed(String),
    /// The destination does not take such events (e.g. an event type its API lacks): the
    /// event is skipped for this destination, the reason recorded for the explain API.
    #[error("{0}")]
    Unsupported(String),
}

/// Invalid destination settings, naming the field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("destination {destination}: {}: {problem}", self.path())]
pub struct ConfigError {
    /// Destination id.
    pub destination: String,
    /// Config key.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl ConfigError {
    /// Where the problem is, relative to the destination: `config.<field>`, or the field
    /// itself for `transformations[…]` and `destinationDefinition…`.
    pub fn path(&self) -> String {
        if self.field.is_empty() {
            "config".into()
        } else if self.field.starts_with("transformations")
            || self.field.starts_with("destinationDefinition")
        {
            self.field.clone()
        } else {
            format!("config.{}", self.field)
        }
    }
}

/// The processor's side of a destination kind: how an event becomes what is stored for it
/// (`rt_jobs` payloads, or `wh_jobs` rows for a batch-loaded kind). Every kind has it.
pub trait Mapping: Send + Sync {
    /// The kind name (`WEBHOOK`).
    fn kind(&self) -> &'static str;
    /// Maps a normalised event to zero or more destination-ready payloads.
    fn transform(&self, event: &Map<String, Value>) -> Result<Vec<Value>, TransformError>;
    /// [`Mapping::transform`] with each payload serialised, as `rt_jobs` stores it.
    /// Kinds that can write their payload straight from the event override this.
    fn transform_text(&self, event: &Map<String, Value>) -> Result<Vec<String>, TransformError> {
        self.transform(event)
            .map(|payloads| payloads.iter().map(Value::to_string).collect())
    }
    /// Maps an event given as the JSON text the gateway stored, without parsing it; `None`
    /// when the kind needs the parsed event (then [`Mapping::transform_batch`] is used).
    /// A kind answers the same way for every event. Only used when no user transformation
    /// changed the event.
    fn transform_raw(
        &self,
        _event: &serde_json::value::RawValue,
    ) -> Option<Result<Vec<String>, TransformError>> {
        None
    }
    /// Maps a batch of events to serialised payloads (one result per event, in order).
    /// Kinds that map in Rust use [`Mapping::transform_text`]; script-backed kinds make
    /// one script call per batch.
    fn transform_batch<'a>(
        &'a self,
        events: &'a [&'a Map<String, Value>],
    ) -> BoxFuture<'a, Vec<Result<Vec<String>, TransformError>>> {
        Box::pin(futures::future::ready(
            events.iter().map(|e| self.transform_text(e)).collect(),
        ))
    }
    /// For script-backed kinds, their script (checked by `keel check-config`).
    fn script(&self) -> Option<&Arc<transform::Script>> {
        None
    }
    /// For warehouse kinds, their settings: the processor writes their events to `wh_jobs`
    /// and a warehouse uploader loads them in batches instead of a router delivering them.
    fn warehouse(&self) -> Option<&dyn crate::warehouse::sink::WarehouseKind> {
        None
    }
}

/// The [`Mapping`] of a kind an uploader loads and that keeps
/// each event as the gateway stored it (object storage, the data lake, ClickHouse): the
/// stored text goes to `wh_jobs` unparsed, and the kind answers `warehouse()` with itself.
/// `|kind| name` gives the kind's name from the instance.
#[macro_export]
macro_rules! stored_event_mapping {
    ($kind:ty, |$k:ident| $name:expr) => {
        impl $crate::destinations::Mapping for $kind {
            fn kind(&self) -> &'static str {
                let $k = self;
                $name
            }

            fn transform(
                &self,
                event: &serde_json::Map<String, serde_json::Value>,
            ) -> Result<Vec<serde_json::Value>, $crate::destinations::TransformError> {
                Ok(vec![serde_json::Value::Object(event.clone())])
            }

            fn transform_raw(
                &self,
                event: &serde_json::value::RawValue,
            ) -> Option<Result<Vec<String>, $crate::destinations::TransformError>> {
                Some(Ok(vec![event.get().to_owned()]))
            }

            fn warehouse(&self) -> Option<&dyn $crate::warehouse::sink::WarehouseKind> {
                Some(self)
            }
        }
    };
}

/// The router's side of a destination kind: sending what the processor stored. Batch-loaded
/// kinds (warehouses, object storage) do not have it: an uploader loads their jobs.
pub trait Delivery: Mapping {
    /// Delivers one payload produced by [`Mapping::transform`].
    fn deliver<'a>(&'a self, payload: &'a Value) -> BoxFuture<'a, DeliveryOutcome>;
    /// Delivers a stored payload as `rt_jobs` holds it (JSON text); what routers call.
    /// Kinds that can send it without building a JSON tree override this; the default
    /// parses it and calls [`Delivery::deliver`]. Text that is not JSON is refused.
    fn deliver_text<'a>(&'a self, payload: &'a str) -> BoxFuture<'a, DeliveryOutcome> {
        Box::pin(async move {
            match serde_json::from_str::<Value>(payload) {
                Ok(v) => self.deliver(&v).await,
                Err(e) => DeliveryOutcome::Abort(Failure {
                    error: format!("stored payload is not JSON: {e}"),
                    ..Failure::default()
                }),
            }
        })
    }
    /// Whether this kind delivers several payloads per request, and within which limits
    /// (router side; asked once when a router starts). `None`: one payload per delivery.
    fn batching(&self) -> BoxFuture<'_, Option<batch::BatchLimits>> {
        Box::pin(futures::future::ready(None))
    }
    /// Delivers several stored payloads (a batch the router formed within
    /// [`Delivery::batching`]'s limits, never two of one ordering key) and answers one
    /// outcome per payload, in order. The default delivers them one after another.
    fn deliver_batch<'a>(
        &'a self,
        payloads: &'a [Arc<str>],
    ) -> BoxFuture<'a, Vec<DeliveryOutcome>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(payloads.len());
            for p in payloads {
                out.push(self.deliver_text(p).await);
            }
            out
        })
    }
}

/// A built kind: every kind maps events; all but the batch-loaded ones also deliver (the
/// same value behind both handles).
#[derive(Clone)]
pub struct BuiltKind {
    /// The processor's side.
    pub mapping: Arc<dyn Mapping>,
    /// The router's side; `None` for kinds an uploader loads ([`Mapping::warehouse`]).
    pub delivery: Option<Arc<dyn Delivery>>,
}

impl BuiltKind {
    /// A kind a router delivers.
    pub fn delivered<T: Delivery + 'static>(kind: T) -> Self {
        let kind = Arc::new(kind);
        Self {
            mapping: kind.clone(),
            delivery: Some(kind),
        }
    }

    /// A kind an uploader loads in batches.
    pub fn loaded<T: Mapping + 'static>(kind: T) -> Self {
        Self {
            mapping: Arc::new(kind),
            delivery: None,
        }
    }
}

/// Everything destination kinds and transformations are built with.
#[derive(Clone, Default)]
pub struct BuildEnv {
    /// Outbound client settings.
    pub http: HttpConfig,
    /// The JavaScript pool (none when only validating, e.g. `keel check-config`).
    pub pool: Option<Arc<TransformPool>>,
    /// `transformer-scripts`: `libraries/<name>.js` and `destinations/<name>/transform.js`.
    pub scripts_dir: PathBuf,
    /// The workspace file's folder (relative transformation paths start there).
    pub workspace_dir: PathBuf,
}

impl BuildEnv {
    /// Every library in `<scripts_dir>/libraries`.
    pub fn libraries(&self) -> Result<Arc<Libraries>, String> {
        transform::load_libraries(&self.scripts_dir.join("libraries")).map(Arc::new)
    }

    /// A transformation file as the workspace names it.
    pub fn transformation_path(&self, file: &str) -> PathBuf {
        let p = Path::new(file);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.workspace_dir.join(p)
        }
    }
}

/// A destination of `kind` with `config`, as a workspace would hold it (unit tests).
#[cfg(test)]
pub(crate) fn test_destination(
    id: &str,
    kind: &str,
    config: Value,
) -> crate::workspace::Destination {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": id, "enabled": true, "config": config,
        "destinationDefinition": {"name": kind}
    }))
    .expect("destination")
}

/// The field of each problem building a `kind` destination with `config` finds (the
/// schema pass, then the constructor), in order (unit tests).
#[cfg(test)]
pub(crate) fn settings_problems(kind: &str, config: Value) -> Vec<String> {
    let dest = test_destination("d", kind, config);
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../transformer-scripts");
    let env = BuildEnv {
        scripts_dir: scripts.clone(),
        ..Default::default()
    };
    let catalogue = catalogue::Catalogue::load(&scripts);
    match catalogue::build(&catalogue, &dest, &env, &Default::default()) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.into_iter().map(|e| e.field).collect(),
    }
}
