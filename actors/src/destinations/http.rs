//! The shared HTTP sender: turns a [`DeliveryRequest`] (RudderStack's transformer response
//! shape) into a reqwest call and classifies the answer into a [`DeliveryOutcome`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{DeliveryOutcome, Failure, HttpSettings};

/// A request a destination wants sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRequest {
    /// HTTP method (`POST`, `PUT`, `GET`…).
    #[serde(default = "default_method")]
    pub method: String,
    /// Absolute URL.
    pub endpoint: String,
    /// Header name → value.
    #[serde(default)]
    pub headers: Map<String, Value>,
    /// Query parameters.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// The body, in one of four encodings.
    #[serde(default)]
    pub body: RequestBody,
}

fn default_method() -> String {
    "POST".into()
}

/// A request body; the first non-empty encoding is sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestBody {
    /// Sent as JSON.
    #[serde(rename = "JSON", default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// Sent as a JSON array.
    #[serde(
        rename = "JSON_ARRAY",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub json_array: Option<Value>,
    /// Sent as `application/x-www-form-urlencoded`.
    #[serde(rename = "FORM", default, skip_serializing_if = "Option::is_none")]
    pub form: Option<Map<String, Value>>,
    /// Sent as `application/xml`.
    #[serde(rename = "XML", default, skip_serializing_if = "Option::is_none")]
    pub xml: Option<String>,
}

/// Builds the pooled client for one destination.
pub fn client(settings: &HttpSettings) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .user_agent(concat!("Keel/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

fn value_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

const BODY_KEEP: usize = 1024;

/// Sends `payload` (a serialised [`DeliveryRequest`]) and classifies the result.
pub async fn send(client: &reqwest::Client, payload: &Value) -> DeliveryOutcome {
    let req: DeliveryRequest = match DeliveryRequest::deserialize(payload) {
        Ok(r) => r,
        Err(e) => {
            return DeliveryOutcome::Abort(Failure {
                error: format!("stored payload is not a delivery request: {e}"),
                ..Failure::default()
            })
        }
    };
    let method = match reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            return DeliveryOutcome::Abort(Failure {
                error: format!("invalid HTTP method {:?}", req.method),
                ..Failure::default()
            })
        }
    };
    let mut builder = client.request(method, &req.endpoint);
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), value_str(v));
    }
    if !req.params.is_empty() {
        let params: Vec<(String, String)> = req
            .params
            .iter()
            .map(|(k, v)| (k.clone(), value_str(v)))
            .collect();
        builder = builder.query(&params);
    }
    let body = &req.body;
    builder = if let Some(json) = &body.json {
        builder.json(json)
    } else if let Some(arr) = &body.json_array {
        builder.json(arr)
    } else if let Some(form) = &body.form {
        let form: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| (k.clone(), value_str(v)))
            .collect();
        builder.form(&form)
    } else if let Some(xml) = &body.xml {
        builder
            .header("Content-Type", "application/xml")
            .body(xml.clone())
    } else {
        builder
    };
    match builder.send().await {
        Err(e) => {
            // The URL may carry credentials (userinfo, tokens in the query); the error is
            // stored with the job and logged when it is dead-lettered.
            let e = e.without_url();
            let error = if e.is_timeout() {
                format!("timed out: {e}")
            } else if e.is_connect() {
                format!("connection failed: {e}")
            } else if e.is_builder() {
                return DeliveryOutcome::Abort(Failure {
                    error: format!("invalid request: {e}"),
                    ..Failure::default()
                });
            } else {
                format!("request failed: {e}")
            };
            DeliveryOutcome::Retry(Failure {
                error,
                ..Failure::default()
            })
        }
        Ok(res) => classify(res).await,
    }
}

async fn classify(res: reqwest::Response) -> DeliveryOutcome {
    let status = res.status();
    if status.is_success() {
        // Drain the body so the connection goes back to the pool.
        let _ = res.bytes().await;
        return DeliveryOutcome::Delivered;
    }
    let retry_after = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut body = res.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    body.truncate(BODY_KEEP);
    let failure = Failure {
        status: Some(status.as_u16()),
        error: format!("destination answered {status}"),
        body: String::from_utf8_lossy(&body).into_owned(),
        retry_after,
    };
    let code = status.as_u16();
    if code == 429 || code == 408 || status.is_server_error() {
        DeliveryOutcome::Retry(failure)
    } else {
        DeliveryOutcome::Abort(failure)
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
