//! `WEBHOOK`: POSTs (or PUT/GET…) each event's JSON to a URL, as RudderStack's webhook
//! destination does. Config: `webhookUrl` (required), `webhookMethod` (default POST),
//! `headers` (`[{ "from": name, "to": value }]`). Keel extension: `batch: true` sends up to
//! `maxBatchSize` events (default 100; `maxBatchBytes`, `maxBatchWaitMs`) per request as
//! one JSON array; the whole request's status is every event's outcome.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use std::sync::Arc;

use super::batch::{self, BatchConfig, BatchLimits};
use super::http::{self, DeliveryRequest, RequestBody};
use super::{ConfigError, Delivery, DeliveryOutcome, HttpConfig, Mapping, TransformError};
use crate::workspace;

/// Kind name in the workspace.
pub const KIND: &str = "WEBHOOK";

/// One custom header.
#[derive(Debug, Clone, Deserialize)]
pub struct HeaderPair {
    /// Header name.
    pub from: String,
    /// Header value.
    pub to: String,
}

/// `WEBHOOK` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookConfig {
    /// Where to send events.
    pub webhook_url: String,
    /// HTTP method.
    #[serde(default)]
    pub webhook_method: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: Vec<HeaderPair>,
    /// Send several events per request as a JSON array (body-carrying methods only).
    #[serde(default)]
    pub batch: bool,
}

/// A configured webhook.
pub struct Webhook {
    config: WebhookConfig,
    client: http::HttpClient,
    batching: Option<BatchLimits>,
}

impl Webhook {
    /// Reads `dest.config` (accepted by the WEBHOOK schema: an http(s) URL, a method token,
    /// no batching with GET); only a URL the URL parser refuses is reported.
    pub fn new(dest: &workspace::Destination, settings: &HttpConfig) -> Result<Self, ConfigError> {
        let bad = |field: &str, problem: String| ConfigError {
            destination: dest.id.clone(),
            field: field.into(),
            problem,
        };
        let config: WebhookConfig = serde_json::from_value(Value::Object(dest.config.clone()))
            .map_err(|e| bad("webhookUrl", e.to_string()))?;
        reqwest::Url::parse(config.webhook_url.trim()).map_err(|e| {
            bad(
                "webhookUrl",
                format!("{:?} is not a URL: {e}", config.webhook_url),
            )
        })?;
        let batching = if config.batch {
            BatchConfig::from_config(&dest.config)
                .limits(batch::DEFAULT_MAX_EVENTS, batch::DEFAULT_MAX_BYTES)
        } else {
            None
        };
        Ok(Self {
            config,
            client: crate::outbound::client(settings),
            batching,
        })
    }
}

/// A webhook's stored request written straight from the event (no copy of it): the
/// serialised [`DeliveryRequest`] of a body-carrying method, fields in the order a JSON
/// tree of it would have.
#[derive(Serialize)]
struct BodyRequest<'a, B: Serialize + ?Sized> {
    body: JsonBody<'a, B>,
    endpoint: &'a str,
    headers: &'a Map<String, Value>,
    method: &'a str,
    params: Map<String, Value>,
}

#[derive(Serialize)]
struct JsonBody<'a, B: Serialize + ?Sized> {
    #[serde(rename = "JSON")]
    json: &'a B,
}

impl Webhook {
    fn method(&self) -> String {
        self.config
            .webhook_method
            .as_deref()
            .unwrap_or("POST")
            .to_ascii_uppercase()
    }

    /// The stored request of a body-carrying method with `body` as its JSON body.
    fn body_request<B: Serialize + ?Sized>(
        &self,
        method: &str,
        body: &B,
    ) -> Result<Vec<String>, TransformError> {
        let req = BodyRequest {
            body: JsonBody { json: body },
            endpoint: &self.config.webhook_url,
            headers: &self.headers(),
            method,
            params: Map::new(),
        };
        serde_json::to_string(&req)
            .map(|p| vec![p])
            .map_err(|e| TransformError::Failed(format!("cannot encode webhook request: {e}")))
    }

    fn headers(&self) -> Map<String, Value> {
        let mut headers = Map::new();
        for h in &self.config.headers {
            if !h.from.is_empty() {
                headers.insert(h.from.clone(), Value::String(h.to.clone()));
            }
        }
        headers
    }
}

impl Mapping for Webhook {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn transform_text(&self, event: &Map<String, Value>) -> Result<Vec<String>, TransformError> {
        let method = self.method();
        if method == "GET" {
            return self
                .transform(event)
                .map(|payloads| payloads.iter().map(Value::to_string).collect());
        }
        self.body_request(&method, event)
    }

    /// The stored event text is the body as it is: the gateway wrote it with serde_json from
    /// a map, so it is byte for byte what serialising the parsed event would give.
    fn transform_raw(&self, event: &RawValue) -> Option<Result<Vec<String>, TransformError>> {
        let method = self.method();
        (method != "GET").then(|| self.body_request(&method, event))
    }

    fn transform(&self, event: &Map<String, Value>) -> Result<Vec<Value>, TransformError> {
        let method = self.method();
        let headers = self.headers();
        let (params, body) = if method == "GET" {
            // RudderStack sends GET webhooks with the event's top-level scalars as query params.
            let params = event
                .iter()
                .filter(|(_, v)| !v.is_object() && !v.is_array())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (params, RequestBody::default())
        } else {
            (
                Map::new(),
                RequestBody {
                    json: Some(Value::Object(event.clone())),
                    ..RequestBody::default()
                },
            )
        };
        let req = DeliveryRequest {
            method,
            endpoint: self.config.webhook_url.clone(),
            headers,
            params,
            body,
        };
        serde_json::to_value(req)
            .map(|v| vec![v])
            .map_err(|e| TransformError::Failed(format!("cannot encode webhook request: {e}")))
    }
}

impl Delivery for Webhook {
    fn deliver<'a>(&'a self, payload: &'a Value) -> BoxFuture<'a, DeliveryOutcome> {
        Box::pin(http::send(&self.client, payload))
    }

    fn deliver_text<'a>(&'a self, payload: &'a str) -> BoxFuture<'a, DeliveryOutcome> {
        Box::pin(http::send_text(&self.client, payload))
    }

    fn batching(&self) -> BoxFuture<'_, Option<BatchLimits>> {
        Box::pin(futures::future::ready(self.batching))
    }

    fn deliver_batch<'a>(
        &'a self,
        payloads: &'a [Arc<str>],
    ) -> BoxFuture<'a, Vec<DeliveryOutcome>> {
        Box::pin(async move {
            let texts: Vec<&str> = payloads.iter().map(|p| &**p).collect();
            let outcome = http::send_merged(&self.client, &texts).await;
            vec![outcome; payloads.len()]
        })
    }
}
