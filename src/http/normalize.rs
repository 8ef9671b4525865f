//! Validation and normalisation of Segment-spec events, independent of HTTP: type from the
//! path, identity required, per-type required fields, messageId default, batch-level
//! `context`/`integrations` merged in, `receivedAt` stamped, and the client clock-skew
//! correction `timestamp = receivedAt − (sentAt − originalTimestamp)`.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use super::error::ApiError;

/// The six Segment event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Who the user is.
    Identify,
    /// What the user did.
    Track,
    /// A web page view.
    Page,
    /// A mobile screen view.
    Screen,
    /// Membership of a group / account.
    Group,
    /// Merge of two identities.
    Alias,
}

impl EventType {
    /// The wire name (`"track"`…).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Identify => "identify",
            EventType::Track => "track",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Group => "group",
            EventType::Alias => "alias",
        }
    }

    /// Parses a wire name, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "identify" => EventType::Identify,
            "track" => EventType::Track,
            "page" => EventType::Page,
            "screen" => EventType::Screen,
            "group" => EventType::Group,
            "alias" => EventType::Alias,
            _ => return None,
        })
    }
}

/// Request-wide facts every event of the request gets.
pub struct RequestInfo {
    /// When the gateway received the request.
    pub received_at: DateTime<Utc>,
    /// Client address, used for `context.ip` when the event has none.
    pub ip: Option<String>,
}

/// Batch-level fields that apply to every event of a batch.
#[derive(Default)]
pub struct BatchDefaults<'a> {
    /// Merged under each event's `context` (event keys win).
    pub context: Option<&'a Map<String, Value>>,
    /// Merged under each event's `integrations` (event keys win).
    pub integrations: Option<&'a Map<String, Value>>,
    /// Used when an event has no `sentAt` of its own.
    pub sent_at: Option<&'a Value>,
}

/// Formats a time the way Keel stores every timestamp: RFC 3339, milliseconds, `Z`.
pub fn format_ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an ISO-8601 / RFC 3339 timestamp; one without offset is taken as UTC.
fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f%z",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    None
}

/// Years RFC 3339 (and so every stored timestamp) can express: 0001–9999.
fn storable(t: &DateTime<Utc>) -> bool {
    use chrono::Datelike;
    (1..=9999).contains(&t.year())
}

fn ts_field(
    v: Option<&Value>,
    field: &str,
    index: usize,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_ts(s).filter(storable).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_timestamp",
                format!("event {index}: {field} {s:?} is not an ISO-8601 timestamp"),
            )
            .at(index)
        }),
        Some(_) => Err(ApiError::bad_request(
            "invalid_timestamp",
            format!("event {index}: {field} must be an ISO-8601 string"),
        )
        .at(index)),
    }
}

/// A non-empty string id, or a number turned into its string form; `None` when absent/empty.
/// Deepest nesting of objects and arrays an event may have. Keel re-reads stored events
/// inside larger documents (a request's array, a delivery's request description), and
/// serde_json stops at 128 levels, so the gateway refuses what could not be read back.
pub const MAX_EVENT_DEPTH: usize = 64;

/// Nesting depth of `v` (a scalar is 0, `{}` is 1), counted up to `limit + 1`.
fn depth(v: &Value, limit: usize) -> usize {
    let children: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Object(m) => Box::new(m.values()),
        Value::Array(a) => Box::new(a.iter()),
        _ => return 0,
    };
    if limit == 0 {
        return 1;
    }
    1 + children.map(|c| depth(c, limit - 1)).max().unwrap_or(0)
}

/// Ids and names end up in Keel's own text columns (dedup, ordering keys), which cannot
/// hold NUL; other strings keep their `\u0000` intact.
fn nul_in(key: &str, index: usize) -> ApiError {
    ApiError::bad_request(
        "invalid_field",
        format!("event {index}: {key} contains a NUL character (\\u0000), which ids and names cannot hold"),
    )
    .at(index)
}

fn id_field(
    event: &mut Map<String, Value>,
    key: &str,
    index: usize,
) -> Result<Option<String>, ApiError> {
    match event.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s.contains('\0') => Err(nul_in(key, index)),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => {
            let s = n.to_string();
            event.insert(key.to_owned(), Value::String(s.clone()));
            Ok(Some(s))
        }
        Some(_) => Err(ApiError::bad_request(
            "invalid_field",
            format!("event {index}: {key} must be a string or a number"),
        )
        .at(index)),
    }
}

fn merge_defaults(
    event: &mut Map<String, Value>,
    key: &str,
    defaults: Option<&Map<String, Value>>,
    index: usize,
) -> Result<(), ApiError> {
    match event.get_mut(key) {
        None | Some(Value::Null) => {
            if let Some(d) = defaults {
                event.insert(key.to_owned(), Value::Object(d.clone()));
            }
        }
        Some(Value::Object(own)) => {
            if let Some(d) = defaults {
                for (k, v) in d {
                    own.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("event {index}: {key} must be an object"),
            )
            .at(index))
        }
    }
    Ok(())
}

fn require_str(
    event: &Map<String, Value>,
    key: &str,
    ty: EventType,
    index: usize,
) -> Result<(), ApiError> {
    match event.get(key) {
        Some(Value::String(s)) if s.contains('\0') => Err(nul_in(key, index)),
        Some(Value::String(s)) if !s.is_empty() => Ok(()),
        Some(Value::Number(_)) if key != "event" => Ok(()),
        _ => Err(ApiError::bad_request(
            "missing_field",
            format!(
                "event {index}: a {} event needs a non-empty {key}",
                ty.as_str()
            ),
        )
        .at(index)),
    }
}

/// Validates and normalises one event in place; returns its messageId.
///
/// `path_type` is the type named by the endpoint (`/v1/track`); `None` for batches, where
/// each event must carry a valid `type`.
pub fn normalize_event(
    event: &mut Map<String, Value>,
    index: usize,
    path_type: Option<EventType>,
    defaults: &BatchDefaults<'_>,
    request: &RequestInfo,
) -> Result<String, ApiError> {
    let ty = match path_type {
        Some(t) => t,
        None => match event.get("type") {
            Some(Value::String(s)) => EventType::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_type",
                    format!(
                        "event {index}: type {s:?} is not one of identify, track, page, screen, group, alias"
                    ),
                )
                .at(index)
            })?,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_type",
                    format!("event {index}: missing type (identify, track, page, screen, group or alias)"),
                )
                .at(index))
            }
        },
    };
    event.insert("type".into(), Value::String(ty.as_str().into()));
    event.remove("writeKey");

    let user_id = id_field(event, "userId", index)?;
    let anonymous_id = id_field(event, "anonymousId", index)?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(ApiError::bad_request(
            "missing_identity",
            format!("event {index}: needs a userId or an anonymousId"),
        )
        .at(index));
    }
    match ty {
        EventType::Track => require_str(event, "event", ty, index)?,
        EventType::Group => require_str(event, "groupId", ty, index)?,
        EventType::Alias => require_str(event, "previousId", ty, index)?,
        _ => {}
    }

    let message_id = match id_field(event, "messageId", index)? {
        Some(id) => id,
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            event.insert("messageId".into(), Value::String(id.clone()));
            id
        }
    };

    merge_defaults(event, "context", defaults.context, index)?;
    merge_defaults(event, "integrations", defaults.integrations, index)?;
    if let Some(ip) = &request.ip {
        let ctx = event
            .entry("context")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(ctx) = ctx {
            ctx.entry("ip").or_insert_with(|| Value::String(ip.clone()));
        }
    }

    // Client clock: originalTimestamp (RudderStack SDKs) or timestamp (Segment SDKs) is
    // when the event happened, sentAt when the client sent it, both on the client's clock.
    let original = match ts_field(event.get("originalTimestamp"), "originalTimestamp", index)? {
        Some(t) => Some(t),
        None => ts_field(event.get("timestamp"), "timestamp", index)?,
    };
    let sent_at = match ts_field(event.get("sentAt"), "sentAt", index)? {
        Some(t) => Some(t),
        None => ts_field(defaults.sent_at, "sentAt", index)?,
    };
    let received = request.received_at;
    let timestamp = match (original, sent_at) {
        // A skew that puts the event outside years 1–9999 (or chrono's range) means the
        // client's clocks are nonsense: use receivedAt.
        (Some(o), Some(s)) => received
            .checked_sub_signed(s - o)
            .filter(storable)
            .unwrap_or(received),
        (Some(o), None) => o,
        _ => received,
    };
    if let Some(o) = original {
        event.insert("originalTimestamp".into(), Value::String(format_ts(o)));
    }
    if let Some(s) = sent_at {
        event.insert("sentAt".into(), Value::String(format_ts(s)));
    }
    event.insert("receivedAt".into(), Value::String(format_ts(received)));
    event.insert("timestamp".into(), Value::String(format_ts(timestamp)));
    // Checked last: batch-level context merged in counts too.
    let nesting = event
        .values()
        .map(|v| depth(v, MAX_EVENT_DEPTH))
        .max()
        .unwrap_or(0)
        + 1;
    if nesting > MAX_EVENT_DEPTH {
        return Err(ApiError::bad_request(
            "nesting_too_deep",
            format!("event {index}: objects and arrays nest deeper than {MAX_EVENT_DEPTH} levels"),
        )
        .at(index));
    }
    Ok(message_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req() -> RequestInfo {
        RequestInfo {
            received_at: parse_ts("2026-01-01T12:00:10.000Z").expect("valid"),
            ip: Some("10.1.2.3".into()),
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn corrects_client_clock_skew() {
        // Client clock is 1 h ahead: it sent 2 s after the event happened.
        let mut e = obj(json!({"userId": "u", "event": "E",
            "originalTimestamp": "2026-01-01T13:00:00.000Z", "sentAt": "2026-01-01T13:00:02.000Z"}));
        normalize_event(
            &mut e,
            0,
            Some(EventType::Track),
            &BatchDefaults::default(),
            &req(),
        )
        .expect("valid");
        assert_eq!(e["timestamp"], "2026-01-01T12:00:08.000Z");
        assert_eq!(e["receivedAt"], "2026-01-01T12:00:10.000Z");
        assert_eq!(e["originalTimestamp"], "2026-01-01T13:00:00.000Z");
        assert_eq!(e["type"], "track");
    }

    #[test]
    fn segment_timestamp_counts_as_original_and_batch_sent_at_applies() {
        let mut e = obj(
            json!({"anonymousId": "a", "type": "page", "timestamp": "2026-01-01T11:59:00+00:00"}),
        );
        let sent = json!("2026-01-01T11:59:30Z");
        let d = BatchDefaults {
            sent_at: Some(&sent),
            ..Default::default()
        };
        normalize_event(&mut e, 0, None, &d, &req()).expect("valid");
        assert_eq!(e["timestamp"], "2026-01-01T11:59:40.000Z");
        assert_eq!(e["originalTimestamp"], "2026-01-01T11:59:00.000Z");
    }

    #[test]
    fn merges_batch_context_under_event_context() {
        let mut e = obj(json!({"userId": 42, "type": "identify",
            "context": {"library": {"name": "own"}, "locale": "de"}}));
        let ctx = obj(json!({"library": {"name": "batch"}, "os": {"name": "linux"}}));
        let integ = obj(json!({"All": false}));
        let d = BatchDefaults {
            context: Some(&ctx),
            integrations: Some(&integ),
            sent_at: None,
        };
        let id = normalize_event(&mut e, 3, None, &d, &req()).expect("valid");
        assert_eq!(e["context"]["library"]["name"], "own");
        assert_eq!(e["context"]["os"]["name"], "linux");
        assert_eq!(e["context"]["ip"], "10.1.2.3");
        assert_eq!(e["integrations"]["All"], false);
        assert_eq!(e["userId"], "42");
        assert_eq!(e["messageId"], Value::String(id.clone()));
        assert_eq!(id.len(), 36);
    }

    #[test]
    fn names_the_event_index_in_errors() {
        let mut e = obj(json!({"type": "track", "event": "E"}));
        let err =
            normalize_event(&mut e, 7, None, &BatchDefaults::default(), &req()).expect_err("no id");
        assert_eq!((err.code, err.index), ("missing_identity", Some(7)));
        let mut e = obj(json!({"type": "purchase", "userId": "u"}));
        let err = normalize_event(&mut e, 2, None, &BatchDefaults::default(), &req())
            .expect_err("bad type");
        assert_eq!((err.code, err.index), ("invalid_type", Some(2)));
        let mut e = obj(json!({"userId": "u"}));
        let err = normalize_event(
            &mut e,
            0,
            Some(EventType::Track),
            &BatchDefaults::default(),
            &req(),
        )
        .expect_err("no event");
        assert_eq!(err.code, "missing_field");
        let mut e = obj(json!({"userId": "u", "event": "E", "sentAt": "yesterday"}));
        let err = normalize_event(
            &mut e,
            0,
            Some(EventType::Track),
            &BatchDefaults::default(),
            &req(),
        )
        .expect_err("bad ts");
        assert_eq!(err.code, "invalid_timestamp");
    }

    fn track(v: Value) -> Result<Map<String, Value>, ApiError> {
        let mut e = obj(v);
        normalize_event(
            &mut e,
            0,
            Some(EventType::Track),
            &BatchDefaults::default(),
            &req(),
        )?;
        Ok(e)
    }

    #[test]
    fn refuses_events_nested_deeper_than_the_limit() {
        let mut deep = json!(1);
        for _ in 0..MAX_EVENT_DEPTH - 1 {
            deep = json!({ "a": deep });
        }
        // The event object and MAX_EVENT_DEPTH - 1 objects under it: exactly at the limit.
        track(json!({"userId": "u", "event": "E", "properties": deep.clone()})).expect("fits");
        let err = track(json!({"userId": "u", "event": "E", "properties": [deep]}))
            .expect_err("one level too deep");
        assert_eq!(err.code, "nesting_too_deep");
    }

    #[test]
    fn refuses_nul_in_ids_and_keeps_it_elsewhere() {
        let err = track(json!({"userId": "a\u{0}b", "event": "E"})).expect_err("NUL id");
        assert_eq!(err.code, "invalid_field");
        let err = track(json!({"userId": "u", "event": "E\u{0}"})).expect_err("NUL name");
        assert_eq!(err.code, "invalid_field");
        let e = track(json!({"userId": "u", "event": "E", "properties": {"s": "a\u{0}b"}}))
            .expect("NUL in a property");
        assert_eq!(e["properties"]["s"], "a\u{0}b");
    }

    #[test]
    fn absurd_clock_skew_falls_back_to_received_at() {
        let e = track(json!({"userId": "u", "event": "E",
            "originalTimestamp": "2023-01-01T00:00:01Z", "sentAt": "4052-01-01T00:00:00Z"}))
        .expect("valid timestamps, absurd skew");
        assert_eq!(
            e["timestamp"], e["receivedAt"],
            "not year -3 (found by fuzzing)"
        );
        let err = track(json!({"userId": "u", "event": "E", "sentAt": "+20000-01-01T00:00:00"}))
            .expect_err("beyond RFC 3339");
        assert_eq!(err.code, "invalid_timestamp");
    }
}
