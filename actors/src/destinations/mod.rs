//! Destination kinds behind one [`Destination`] trait. A kind maps a normalised event to the
//! payloads stored in `rt_jobs` (processor side) and delivers a stored payload (router side).
//! HTTP kinds describe their request in RudderStack's transformer response shape
//! ([`DeliveryRequest`]) and share one sender, so a router never knows a destination's API;
//! a JavaScript-backed kind only has to produce the same shape. Each kind is a module with
//! its config struct. Message-broker kinds (`REDIS`, `RABBITMQ`, `NATS`) share the helpers
//! in [`broker`] and store in each payload what their delivery needs (stream, routing key or
//! subject, and the body), so delivery parses no event.

pub mod broker;
pub mod http;
pub mod nats;
pub mod rabbitmq;
pub mod redis;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::workspace;

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

/// A kind's refusal to map an event (sent to the DLQ with this reason).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TransformError(pub String);

/// Invalid destination settings, naming the field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("destination {destination}: config.{field}: {problem}")]
pub struct ConfigError {
    /// Destination id.
    pub destination: String,
    /// Config key.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

/// One destination kind instance.
pub trait Destination: Send + Sync {
    /// The kind name (`WEBHOOK`).
    fn kind(&self) -> &'static str;
    /// Maps a normalised event to zero or more destination-ready payloads.
    fn transform(&self, event: &Map<String, Value>) -> Result<Vec<Value>, TransformError>;
    /// Delivers one payload produced by [`Destination::transform`].
    fn deliver<'a>(&'a self, payload: &'a Value) -> BoxFuture<'a, DeliveryOutcome>;
    /// For warehouse kinds, their settings: the processor writes their events to `wh_jobs`
    /// and a warehouse uploader loads them in batches instead of a router delivering them.
    fn warehouse(&self) -> Option<&crate::warehouse::PostgresWarehouse> {
        None
    }
}

/// Settings every outbound client shares (HTTP and broker kinds: `timeout` bounds every
/// delivery attempt, `connect_timeout` every connection attempt).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Whole-request timeout.
    pub timeout: Duration,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Idle pooled connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// Allow loopback, private and link-local targets (refused by default).
    pub allow_private_targets: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            pool_max_idle_per_host: 64,
            allow_private_targets: false,
        }
    }
}

/// Builds the kind named by `dest.destinationDefinition.name`.
pub fn build(
    dest: &workspace::Destination,
    http: &HttpSettings,
) -> Result<Arc<dyn Destination>, ConfigError> {
    match dest.destination_definition.name.as_str() {
        webhook::KIND => Ok(Arc::new(webhook::Webhook::new(dest, http)?)),
        crate::warehouse::config::KIND => Ok(Arc::new(crate::warehouse::PostgresWarehouse::new(
            dest,
            http.connect_timeout,
        )?)),
        redis::KIND => Ok(Arc::new(redis::Redis::new(dest, http)?)),
        rabbitmq::KIND => Ok(Arc::new(rabbitmq::RabbitMq::new(dest, http)?)),
        nats::KIND => Ok(Arc::new(nats::Nats::new(dest, http)?)),
        other => Err(ConfigError {
            destination: dest.id.clone(),
            field: "destinationDefinition.name".into(),
            problem: format!("unknown destination kind {other:?}"),
        }),
    }
}

/// Names of every kind this build knows, with the config keys each requires.
pub const KINDS: &[(&str, &[&str])] = &[
    (webhook::KIND, &["webhookUrl"]),
    (
        crate::warehouse::config::KIND,
        &["host", "database", "user"],
    ),
    (redis::KIND, &["address"]),
    (rabbitmq::KIND, &["url"]),
    (nats::KIND, &["url"]),
];

/// A destination of `kind` with `config`, as a workspace would hold it (unit tests).
#[cfg(test)]
pub(crate) fn test_destination(id: &str, kind: &str, config: Value) -> workspace::Destination {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": id, "enabled": true, "config": config,
        "destinationDefinition": {"name": kind}
    }))
    .expect("destination")
}
