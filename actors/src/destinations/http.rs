//! The shared HTTP sender: turns a [`DeliveryRequest`] (RudderStack's transformer response
//! shape) into a call on the destination's [`HttpClient`] (`crate::outbound`, which also
//! refuses non-public targets) and classifies the answer into a [`DeliveryOutcome`]. A
//! refused target is permanent (the job goes to the DLQ with the reason).

use std::time::Duration;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{DeliveryOutcome, Failure};
pub use crate::outbound::HttpClient;
use crate::outbound::{header_map, refused_literal, refused_private, value_str};

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

const BODY_KEEP: usize = 1024;

/// A stored [`DeliveryRequest`] read in place: strings borrowed where they need no
/// unescaping and JSON bodies kept as their text, so sending one builds no JSON tree.
#[derive(Deserialize)]
struct StoredRequest<'a> {
    #[serde(default = "default_method_cow", borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    endpoint: Cow<'a, str>,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default, borrow)]
    body: StoredBody<'a>,
}

fn default_method_cow() -> Cow<'static, str> {
    Cow::Borrowed("POST")
}

/// [`RequestBody`] with its JSON encodings as raw text.
#[derive(Default, Deserialize)]
struct StoredBody<'a> {
    #[serde(rename = "JSON", default, borrow)]
    json: Option<&'a RawValue>,
    #[serde(rename = "JSON_ARRAY", default, borrow)]
    json_array: Option<&'a RawValue>,
    #[serde(rename = "FORM", default)]
    form: Option<Map<String, Value>>,
    #[serde(rename = "XML", default)]
    xml: Option<String>,
}

/// Sends `payload` (a [`DeliveryRequest`] as a JSON tree) and classifies the result.
pub async fn send(client: &HttpClient, payload: &Value) -> DeliveryOutcome {
    send_text(client, &payload.to_string()).await
}

/// Sends `payload` (a serialised [`DeliveryRequest`], as stored) and classifies the result.
/// JSON bodies go out as the stored text: serde_json wrote both, so the bytes are the same
/// as serialising the parsed body again.
pub async fn send_text(client: &HttpClient, payload: &str) -> DeliveryOutcome {
    let builder = match prepare(client, payload) {
        Ok(b) => b,
        Err(outcome) => return outcome,
    };
    match builder.send().await {
        Err(e) => send_error(e),
        Ok(res) => classify(res).await,
    }
}

/// Sends one request carrying the JSON bodies of `payloads` (stored requests to one
/// endpoint) as a JSON array, with the first one's method, endpoint, headers and params:
/// what a batching webhook sends. The bodies are copied as their stored text (see
/// [`merge_bodies`]).
pub async fn send_merged(client: &HttpClient, payloads: &[&str]) -> DeliveryOutcome {
    let (first, array) = match merge_bodies(payloads) {
        Ok(merged) => merged,
        Err(error) => {
            return DeliveryOutcome::Abort(Failure {
                error,
                ..Failure::default()
            })
        }
    };
    let builder = match prepare_request(client, &first, Some(array)) {
        Ok(b) => b,
        Err(outcome) => return outcome,
    };
    match builder.send().await {
        Err(e) => send_error(e),
        Ok(res) => classify(res).await,
    }
}

/// The first payload's request and the JSON array of every payload's body, or why not.
///
/// A destination writes every payload with the same request around the body (one
/// config), so a later payload whose text before and after its body is byte for byte the
/// first one's has its body in between and is not decoded; any other is decoded as far
/// as its body.
fn merge_bodies<'a>(payloads: &[&'a str]) -> Result<(StoredRequest<'a>, String), String> {
    #[derive(Deserialize)]
    struct BodyOnly<'a> {
        #[serde(default, borrow)]
        body: StoredBody<'a>,
    }
    /// The body's text, borrowed from the stored payload.
    fn json_of<'t>(b: &StoredBody<'t>) -> Result<&'t str, String> {
        b.json
            .or(b.json_array)
            .map(RawValue::get)
            .ok_or_else(|| "a batched payload has no JSON body".to_owned())
    }
    let not_a_request =
        |e: serde_json::Error| format!("stored payload is not a delivery request: {e}");
    let Some((first_text, rest)) = payloads.split_first() else {
        return Err("no payloads".into());
    };
    let first: StoredRequest<'a> = serde_json::from_str(first_text).map_err(not_a_request)?;
    let body = json_of(&first.body)?;
    // The first payload's text before and after its body (a slice of it).
    let frame = (body.as_ptr() as usize)
        .checked_sub(first_text.as_ptr() as usize)
        .and_then(|start| {
            let before = first_text.get(..start)?;
            let after = first_text.get(start + body.len()..)?;
            Some((before, after))
        });
    let mut array = String::with_capacity(payloads.iter().map(|p| p.len()).sum::<usize>() + 2);
    array.push('[');
    array.push_str(body);
    for p in rest {
        let framed = frame.and_then(|(before, after)| {
            p.strip_prefix(before)?
                .strip_suffix(after)
                .filter(|b| !b.is_empty())
        });
        let body = match framed {
            Some(b) => b,
            None => json_of(
                &serde_json::from_str::<BodyOnly<'_>>(p)
                    .map_err(not_a_request)?
                    .body,
            )?,
        };
        array.push(',');
        array.push_str(body);
    }
    array.push(']');
    Ok((first, array))
}

/// A destination's whole answer (body bounded), for kinds that read what it said about
/// each event of a batch.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Header name → value (the last value of repeated headers).
    pub headers: Map<String, Value>,
    /// The body as (lossy UTF-8) text, at most [`ANSWER_MAX_BODY`] bytes.
    pub body: String,
    /// When to try again, from `Retry-After` or the vendor's rate-limit reset headers.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

/// Response bytes [`exchange`] keeps.
pub const ANSWER_MAX_BODY: usize = 1 << 20;

impl Answer {
    /// The outcome the status alone says (2xx delivered; 429, 408, 5xx retry; else abort).
    pub fn outcome(&self) -> DeliveryOutcome {
        let mut body = self.body.clone();
        truncate_at_char(&mut body, BODY_KEEP);
        outcome_of(self.status, body, self.retry_after)
    }
}

/// Sends `payload` like [`send_text`] but answers what the destination said (any status);
/// a request that got no answer (refused, timed out, connection failed) is the outcome.
pub async fn exchange(client: &HttpClient, payload: &str) -> Result<Answer, DeliveryOutcome> {
    let builder = prepare(client, payload)?;
    let res = builder.send().await.map_err(send_error)?;
    let status = res.status().as_u16();
    let retry_after = retry_after_of(res.headers(), status);
    let headers = header_map(res.headers());
    let mut bytes = match res.bytes().await {
        Ok(b) => b.to_vec(),
        Err(e) => {
            return Err(DeliveryOutcome::Retry(Failure {
                status: Some(status),
                error: format!("reading the answer failed: {}", e.without_url()),
                ..Failure::default()
            }))
        }
    };
    bytes.truncate(ANSWER_MAX_BODY);
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        retry_after,
    })
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub(crate) fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The reqwest request a stored payload describes, or why it cannot be sent.
fn prepare(client: &HttpClient, payload: &str) -> Result<reqwest::RequestBuilder, DeliveryOutcome> {
    let req: StoredRequest<'_> = serde_json::from_str(payload).map_err(|e| {
        DeliveryOutcome::Abort(Failure {
            error: format!("stored payload is not a delivery request: {e}"),
            ..Failure::default()
        })
    })?;
    prepare_request(client, &req, None)
}

/// The request `req` describes; `json` replaces its JSON body when given.
fn prepare_request(
    client: &HttpClient,
    req: &StoredRequest<'_>,
    json: Option<String>,
) -> Result<reqwest::RequestBuilder, DeliveryOutcome> {
    let method =
        reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes()).map_err(|_| {
            DeliveryOutcome::Abort(Failure {
                error: format!("invalid HTTP method {:?}", req.method),
                ..Failure::default()
            })
        })?;
    let url = client.endpoint(&req.endpoint);
    if let Some(why) = url.as_ref().and_then(|u| refused_literal(client, u)) {
        return Err(DeliveryOutcome::Abort(Failure {
            error: why,
            ..Failure::default()
        }));
    }
    let mut builder = match url {
        Some(url) => client.request(method, url),
        None => client.request(method, req.endpoint.as_ref()),
    };
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), value_str(v));
    }
    let has_content_type = req
        .headers
        .keys()
        .any(|k| k.eq_ignore_ascii_case("content-type"));
    if !req.params.is_empty() {
        let params: Vec<(String, String)> = req
            .params
            .iter()
            .map(|(k, v)| (k.clone(), value_str(v)))
            .collect();
        builder = builder.query(&params);
    }
    let body = &req.body;
    let json = json.or_else(|| body.json.or(body.json_array).map(|j| j.get().to_owned()));
    Ok(if let Some(json) = json {
        if !has_content_type {
            builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        builder.body(json)
    } else if let Some(form) = &body.form {
        let form: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| (k.clone(), value_str(v)))
            .collect();
        builder.form(&form)
    } else if let Some(xml) = &body.xml {
        if !has_content_type {
            builder = builder.header("Content-Type", "application/xml");
        }
        builder.body(xml.clone())
    } else {
        builder
    })
}

/// The outcome of a request that got no answer.
fn send_error(e: reqwest::Error) -> DeliveryOutcome {
    if let Some(why) = refused_private(&e) {
        return DeliveryOutcome::Abort(Failure {
            error: format!("refused: {why}"),
            ..Failure::default()
        });
    }
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

async fn classify(res: reqwest::Response) -> DeliveryOutcome {
    let status = res.status();
    if status.is_success() {
        // Drain the body so the connection goes back to the pool.
        let _ = res.bytes().await;
        return DeliveryOutcome::Delivered;
    }
    let retry_after = retry_after_of(res.headers(), status.as_u16());
    let mut body = res.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    body.truncate(BODY_KEEP);
    outcome_of(
        status.as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
        retry_after,
    )
}

/// The outcome of an answer with `status`: 2xx delivered; 429, 408 and 5xx retry; other
/// statuses abort (the body, at most 1 KB, is kept for the DLQ).
pub fn outcome_of(status: u16, body: String, retry_after: Option<Duration>) -> DeliveryOutcome {
    if (200..300).contains(&status) {
        return DeliveryOutcome::Delivered;
    }
    let shown = reqwest::StatusCode::from_u16(status)
        .map_or_else(|_| status.to_string(), |s| s.to_string());
    let failure = Failure {
        status: Some(status),
        error: format!("destination answered {shown}"),
        body,
        retry_after,
    };
    if status == 429 || status == 408 || status >= 500 {
        DeliveryOutcome::Retry(failure)
    } else {
        DeliveryOutcome::Abort(failure)
    }
}

/// When the destination says to try again: `Retry-After` (seconds or an HTTP date), else,
/// on a 429 or 503, the rate-limit reset headers vendors send (`X-RateLimit-Reset`,
/// `RateLimit-Reset`, `X-Rate-Limit-Reset`, `X-RateLimit-Reset-After`): seconds to wait,
/// or a Unix time in seconds or milliseconds.
pub fn retry_after_of(headers: &reqwest::header::HeaderMap, status: u16) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(d) = get("retry-after").and_then(parse_retry_after) {
        return Some(d);
    }
    if status != 429 && status != 503 {
        return None;
    }
    [
        "x-ratelimit-reset-after",
        "x-ratelimit-reset",
        "ratelimit-reset",
        "x-rate-limit-reset",
    ]
    .into_iter()
    .find_map(|h| get(h).and_then(parse_rate_limit_reset))
}

/// A rate-limit reset value: a delay in seconds, or a Unix time (seconds, or milliseconds
/// past 10^12) turned into the delay until then.
pub fn parse_rate_limit_reset(v: &str) -> Option<Duration> {
    let n = v
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let secs = if n >= 1e12 {
        n / 1000.0 - now
    } else if n >= 1e9 {
        n - now
    } else {
        n
    };
    Some(Duration::from_secs_f64(secs.max(0.0)))
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
    fn merged_bodies_are_cut_from_a_shared_frame_or_decoded() {
        let req = |body: &str, header: &str| {
            format!(
                r#"{{"body":{{"JSON":{body}}},"endpoint":"http://127.0.0.1:9/hook","headers":{{"x":"{header}"}},"method":"POST","params":{{}}}}"#
            )
        };
        let a = req(r#"{"messageId":"a","s":"},\"endpoint\":1"}"#, "h");
        let b = req(r#"{"messageId":"b","n":[1,{"c":2}]}"#, "h");
        // Another frame (its header differs): decoded, not cut.
        let c = req(r#"{"messageId":"c"}"#, "other");
        let d =
            r#"{"endpoint":"http://127.0.0.1:9/hook","body":{"JSON_ARRAY":[{"messageId":"d"}]}}"#;
        let (first, array) = merge_bodies(&[&a, &b, &c, d]).expect("merged");
        assert_eq!(first.endpoint, "http://127.0.0.1:9/hook");
        assert_eq!(
            array,
            r#"[{"messageId":"a","s":"},\"endpoint\":1"},{"messageId":"b","n":[1,{"c":2}]},{"messageId":"c"},[{"messageId":"d"}]]"#
        );
        let v: Value = serde_json::from_str(&array).expect("a JSON array");
        assert_eq!(v[1]["n"][1]["c"], 2);
        let no_body = r#"{"endpoint":"http://127.0.0.1:9/hook","body":{"XML":"<a/>"}}"#;
        assert_eq!(
            merge_bodies(&[&a, no_body]).err().as_deref(),
            Some("a batched payload has no JSON body")
        );
        assert!(merge_bodies(&[&a, "nope"])
            .err()
            .is_some_and(|e| e.starts_with("stored payload is not a delivery request")));
        assert_eq!(merge_bodies(&[]).err().as_deref(), Some("no payloads"));
    }

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

    #[test]
    fn parses_rate_limit_resets_as_delays_or_unix_times() {
        assert_eq!(parse_rate_limit_reset("7"), Some(Duration::from_secs(7)));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let in_30s = parse_rate_limit_reset(&(now + 30).to_string()).expect("epoch seconds");
        assert!((28..=30).contains(&in_30s.as_secs()), "{in_30s:?}");
        let in_10s = parse_rate_limit_reset(&((now + 10) * 1000).to_string()).expect("epoch ms");
        assert!((8..=10).contains(&in_10s.as_secs()), "{in_10s:?}");
        assert_eq!(parse_rate_limit_reset("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_rate_limit_reset("later"), None);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-ratelimit-reset", "4".parse().expect("value"));
        assert_eq!(retry_after_of(&h, 429), Some(Duration::from_secs(4)));
        assert_eq!(retry_after_of(&h, 500), None, "only rate-limit answers");
        h.insert("retry-after", "2".parse().expect("value"));
        assert_eq!(retry_after_of(&h, 500), Some(Duration::from_secs(2)));
    }
}
