//! The pure part of ingest: an ingest request's body text, read under the caps, becomes
//! normalised events — a function of (endpoint, body, limits, request facts) with no I/O and
//! no state, which the handler (`ingest.rs`) and the fuzz target (`fuzz/`) both call. Two
//! steps, so the handler can authenticate with a body's `writeKey` before the events are
//! validated: [`parse_body`] (shape and size) then [`Body::normalize`].

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::event::Event;
use super::normalize::{normalize_event, BatchDefaults, EventType, RequestInfo};

/// Which ingest endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// One event of this type.
    Single(EventType),
    /// `/v1/batch`.
    Batch,
    /// `/v1/import` (same as batch).
    Import,
}

impl Endpoint {
    /// Label value for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Single(t) => t.as_str(),
            Endpoint::Batch => "batch",
            Endpoint::Import => "import",
        }
    }
}

/// The caps a body is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest event, JSON bytes (413 beyond).
    pub max_event_bytes: usize,
}

/// A batch request's body, its events still raw.
#[derive(Deserialize)]
pub struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    integrations: Option<Value>,
    #[serde(default, rename = "sentAt")]
    sent_at: Option<Value>,
    #[serde(default, rename = "writeKey")]
    write_key: Option<Value>,
}

/// A body of the right shape, not yet normalised.
pub enum Body<'a> {
    /// One event for a single-event endpoint.
    Single(EventType, Event<'a>),
    /// A batch (raw events, checked one by one when normalised).
    Batch(BatchBody<'a>),
}

/// Normalised events, their messageIds and ordering keys, in request order.
#[derive(Debug, Default)]
pub struct Events<'a> {
    /// The events as they are stored.
    pub events: Vec<Event<'a>>,
    /// Their messageIds.
    pub message_ids: Vec<String>,
    /// Their ordering keys (userId, else anonymousId).
    pub ordering_keys: Vec<String>,
}

impl<'a> Events<'a> {
    fn with_capacity(n: usize) -> Self {
        Events {
            events: Vec::with_capacity(n),
            message_ids: Vec::with_capacity(n),
            ordering_keys: Vec::with_capacity(n),
        }
    }
}

/// The body as UTF-8 text.
pub fn body_str(body: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("invalid_json", "body is not valid UTF-8 JSON"))
}

fn invalid_json(e: serde_json::Error) -> ApiError {
    ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}"))
}

/// Whether [`Event::parse`] refused `text` for not being an object at all (rather than for
/// something inside one).
fn not_an_object(e: &serde_json::Error, text: &str) -> bool {
    e.is_data() && !text.trim_start().starts_with('{')
}

fn object_field<'a>(
    v: &'a Option<Value>,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(ApiError::bad_request(
            "invalid_field",
            format!("batch-level {name} must be an object"),
        )),
    }
}

fn write_key_field(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Checks `text`'s shape for `endpoint` and the per-event cap of a single event.
pub fn parse_body<'a>(
    endpoint: Endpoint,
    text: &'a str,
    limits: &Limits,
) -> Result<Body<'a>, ApiError> {
    match endpoint {
        Endpoint::Single(ty) => {
            if text.len() > limits.max_event_bytes {
                return Err(ApiError::too_large(format!(
                    "event is {} bytes; the limit is {} bytes per event",
                    text.len(),
                    limits.max_event_bytes
                ))
                .at(0));
            }
            Event::parse(text)
                .map(|e| Body::Single(ty, e))
                .map_err(|e| {
                    if not_an_object(&e, text) {
                        ApiError::bad_request("invalid_json", "body must be a JSON object")
                    } else {
                        invalid_json(e)
                    }
                })
        }
        Endpoint::Batch | Endpoint::Import => serde_json::from_str::<BatchBody<'_>>(text)
            .map(Body::Batch)
            .map_err(|e| {
                if e.is_data() {
                    ApiError::bad_request(
                        "invalid_batch",
                        format!("body must be an object with a \"batch\" array of events: {e}"),
                    )
                } else {
                    invalid_json(e)
                }
            }),
    }
}

impl<'a> Body<'a> {
    /// The `writeKey` the body carries, if any (the event's, or the batch's).
    pub fn write_key(&self) -> Option<String> {
        match self {
            Body::Single(_, event) => write_key_field(event.get("writeKey").as_ref()),
            Body::Batch(b) => write_key_field(b.write_key.as_ref()),
        }
    }

    /// Validates and normalises every event (the first problem names its event index).
    pub fn normalize(self, limits: &Limits, request: &RequestInfo) -> Result<Events<'a>, ApiError> {
        match self {
            Body::Single(ty, mut event) => {
                let n =
                    normalize_event(&mut event, 0, Some(ty), &BatchDefaults::default(), request)?;
                Ok(Events {
                    events: vec![event],
                    message_ids: vec![n.message_id],
                    ordering_keys: vec![n.ordering_key],
                })
            }
            Body::Batch(parsed) => {
                if parsed.batch.is_empty() {
                    return Err(ApiError::bad_request("empty_batch", "batch has no events"));
                }
                let defaults = BatchDefaults {
                    context: object_field(&parsed.context, "context")?,
                    integrations: object_field(&parsed.integrations, "integrations")?,
                    sent_at: parsed.sent_at.as_ref(),
                };
                let mut out = Events::with_capacity(parsed.batch.len());
                for (i, raw) in parsed.batch.iter().enumerate() {
                    let raw = raw.get();
                    if raw.len() > limits.max_event_bytes {
                        return Err(ApiError::too_large(format!(
                            "event {i} is {} bytes; the limit is {} bytes per event",
                            raw.len(),
                            limits.max_event_bytes
                        ))
                        .at(i));
                    }
                    let mut event = Event::parse(raw).map_err(|e| {
                        let message = if not_an_object(&e, raw) {
                            format!("event {i} must be a JSON object")
                        } else {
                            format!("event {i} cannot be read back: {e}")
                        };
                        ApiError::bad_request("invalid_event", message).at(i)
                    })?;
                    let n = normalize_event(&mut event, i, None, &defaults, request)?;
                    out.message_ids.push(n.message_id);
                    out.ordering_keys.push(n.ordering_key);
                    out.events.push(event);
                }
                Ok(out)
            }
        }
    }
}

/// Both steps at once (what the fuzz target and tests call).
pub fn parse_request<'a>(
    endpoint: Endpoint,
    text: &'a str,
    limits: &Limits,
    request: &RequestInfo,
) -> Result<Events<'a>, ApiError> {
    parse_body(endpoint, text, limits)?.normalize(limits, request)
}
