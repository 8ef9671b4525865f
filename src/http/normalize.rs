//! Validation and normalisation of Segment-spec events, independent of HTTP: type from the
//! path, identity required, per-type required fields, messageId default, batch-level
//! `context`/`integrations` merged in, `receivedAt` stamped, and the client clock-skew
//! correction `timestamp = receivedAt − (sentAt − originalTimestamp)`.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::event::{insert_missing, Event, Shape};

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
    /// `received_at` as stored, written once per request.
    received_text: String,
}

impl RequestInfo {
    /// The facts of a request received at `received_at` from `ip`.
    pub fn new(received_at: DateTime<Utc>, ip: Option<String>) -> Self {
        RequestInfo {
            received_at,
            ip,
            received_text: format_ts(received_at),
        }
    }
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

/// True when `s` is written exactly as [`format_ts`] writes a time
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`): once it parses, it is stored as it is.
fn canonical(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
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

/// A timestamp field: the time, and its text as stored (the client's own when it is
/// already written as Keel writes times, else reformatted).
fn ts_field(
    v: Option<&Value>,
    field: &str,
    index: usize,
) -> Result<Option<(DateTime<Utc>, String)>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match parse_ts(s).filter(storable) {
            Some(t) if canonical(s) => Ok(Some((t, s.clone()))),
            Some(t) => Ok(Some((t, format_ts(t)))),
            None => Err(ApiError::bad_request(
                "invalid_timestamp",
                format!("event {index}: {field} {s:?} is not an ISO-8601 timestamp"),
            )
            .at(index)),
        },
        Some(_) => Err(ApiError::bad_request(
            "invalid_timestamp",
            format!("event {index}: {field} must be an ISO-8601 string"),
        )
        .at(index)),
    }
}

/// Deepest nesting of objects and arrays an event may have. Keel re-reads stored events
/// inside larger documents (a request's array, a delivery's request description), and
/// serde_json stops at 128 levels, so the gateway refuses what could not be read back.
pub const MAX_EVENT_DEPTH: usize = 64;

/// Ids and names end up in Keel's own text columns (dedup, ordering keys), which cannot
/// hold NUL; other strings keep their `\u0000` intact.
fn nul_in(key: &str, index: usize) -> ApiError {
    ApiError::bad_request(
        "invalid_field",
        format!("event {index}: {key} contains a NUL character (\\u0000), which ids and names cannot hold"),
    )
    .at(index)
}

/// A non-empty string id, or a number turned into its string form (in the event too);
/// `None` when absent/empty.
fn id_field(
    event: &mut Event<'_>,
    key: &'static str,
    index: usize,
) -> Result<Option<String>, ApiError> {
    match event.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s.contains('\0') => Err(nul_in(key, index)),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => {
            let s = n.to_string();
            event.insert(key, Value::String(s.clone()));
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
    event: &mut Event<'_>,
    key: &'static str,
    defaults: Option<&Map<String, Value>>,
    index: usize,
) -> Result<(), ApiError> {
    match event.shape(key) {
        Shape::Absent | Shape::Null => {
            if let Some(d) = defaults {
                event.insert(key, Value::Object(d.clone()));
            }
        }
        Shape::Object => {
            if let Some(d) = defaults {
                if let Some(own) = event.object_mut(key) {
                    for (k, v) in d {
                        insert_missing(own, k, || v.clone());
                    }
                }
            }
        }
        Shape::Other => {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("event {index}: {key} must be an object"),
            )
            .at(index))
        }
    }
    Ok(())
}

fn require_str(event: &Event<'_>, key: &str, ty: EventType, index: usize) -> Result<(), ApiError> {
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

/// What normalising an event found out about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// Its messageId (the client's, or one Keel generated).
    pub message_id: String,
    /// The key it is ordered by: its userId, else its anonymousId (see
    /// `keel_actors::partition::ordering_key`, which reads the same from a stored event).
    pub ordering_key: String,
}

/// Validates and normalises one event in place.
///
/// `path_type` is the type named by the endpoint (`/v1/track`); `None` for batches, where
/// each event must carry a valid `type`.
pub fn normalize_event(
    event: &mut Event<'_>,
    index: usize,
    path_type: Option<EventType>,
    defaults: &BatchDefaults<'_>,
    request: &RequestInfo,
) -> Result<Normalized, ApiError> {
    let ty = match path_type {
        Some(t) => t,
        None => match event.get("type") {
            Some(Value::String(s)) => EventType::parse(&s).ok_or_else(|| {
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
    event.insert("type", Value::String(ty.as_str().into()));
    event.remove("writeKey");

    let user_id = id_field(event, "userId", index)?;
    let anonymous_id = id_field(event, "anonymousId", index)?;
    let ordering_key = match (user_id, anonymous_id) {
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => {
            return Err(ApiError::bad_request(
                "missing_identity",
                format!("event {index}: needs a userId or an anonymousId"),
            )
            .at(index))
        }
    };
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
            event.insert("messageId", Value::String(id.clone()));
            id
        }
    };

    merge_defaults(event, "context", defaults.context, index)?;
    merge_defaults(event, "integrations", defaults.integrations, index)?;
    if let Some(ip) = &request.ip {
        match event.shape("context") {
            Shape::Absent => {
                let mut ctx = Map::new();
                ctx.insert("ip".into(), Value::String(ip.clone()));
                event.insert("context", Value::Object(ctx));
            }
            Shape::Object => {
                if let Some(ctx) = event.object_mut("context") {
                    insert_missing(ctx, "ip", || Value::String(ip.clone()));
                }
            }
            // `null` stays `null`; anything else was refused above.
            Shape::Null | Shape::Other => {}
        }
    }

    // Client clock: originalTimestamp (RudderStack SDKs) or timestamp (Segment SDKs) is
    // when the event happened, sentAt when the client sent it, both on the client's clock.
    let original = match ts_field(
        event.get("originalTimestamp").as_ref(),
        "originalTimestamp",
        index,
    )? {
        Some(t) => Some(t),
        None => ts_field(event.get("timestamp").as_ref(), "timestamp", index)?,
    };
    let sent_at = match ts_field(event.get("sentAt").as_ref(), "sentAt", index)? {
        Some(t) => Some(t),
        None => ts_field(defaults.sent_at, "sentAt", index)?,
    };
    let received = request.received_at;
    let timestamp = match (&original, &sent_at) {
        // A skew that puts the event outside years 1–9999 (or chrono's range) means the
        // client's clocks are nonsense: use receivedAt.
        (Some((o, _)), Some((s, _))) => received
            .checked_sub_signed(*s - *o)
            .filter(storable)
            .unwrap_or(received),
        (Some((o, _)), None) => *o,
        _ => received,
    };
    let timestamp_text = match &original {
        _ if timestamp == received => request.received_text.clone(),
        Some((o, text)) if *o == timestamp => text.clone(),
        _ => format_ts(timestamp),
    };
    if let Some((_, text)) = original {
        event.insert("originalTimestamp", Value::String(text));
    }
    if let Some((_, text)) = sent_at {
        event.insert("sentAt", Value::String(text));
    }
    event.insert("receivedAt", Value::String(request.received_text.clone()));
    event.insert("timestamp", Value::String(timestamp_text));
    // Checked last: batch-level context merged in counts too.
    if event.depth() > MAX_EVENT_DEPTH {
        return Err(ApiError::bad_request(
            "nesting_too_deep",
            format!("event {index}: objects and arrays nest deeper than {MAX_EVENT_DEPTH} levels"),
        )
        .at(index));
    }
    Ok(Normalized {
        message_id,
        ordering_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req() -> RequestInfo {
        RequestInfo::new(
            parse_ts("2026-01-01T12:00:10.000Z").expect("valid"),
            Some("10.1.2.3".into()),
        )
    }

    /// Normalises `v` (as a client would send it); the event as stored, and what was found.
    fn run(
        v: Value,
        index: usize,
        path_type: Option<EventType>,
        d: &BatchDefaults<'_>,
    ) -> Result<(Map<String, Value>, Normalized), ApiError> {
        let text = v.to_string();
        let mut e = Event::parse(&text).expect("an object");
        let n = normalize_event(&mut e, index, path_type, d, &req())?;
        Ok((e.to_map(), n))
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
        let (e, n) = run(
            json!({"userId": "u", "event": "E",
            "originalTimestamp": "2026-01-01T13:00:00.000Z", "sentAt": "2026-01-01T13:00:02.000Z"}),
            0,
            Some(EventType::Track),
            &BatchDefaults::default(),
        )
        .expect("valid");
        assert_eq!(n.ordering_key, "u");
        assert_eq!(e["timestamp"], "2026-01-01T12:00:08.000Z");
        assert_eq!(e["receivedAt"], "2026-01-01T12:00:10.000Z");
        assert_eq!(e["originalTimestamp"], "2026-01-01T13:00:00.000Z");
        assert_eq!(e["type"], "track");
    }

    #[test]
    fn segment_timestamp_counts_as_original_and_batch_sent_at_applies() {
        let sent = json!("2026-01-01T11:59:30Z");
        let d = BatchDefaults {
            sent_at: Some(&sent),
            ..Default::default()
        };
        let (e, n) = run(
            json!({"anonymousId": "a", "type": "page", "timestamp": "2026-01-01T11:59:00+00:00"}),
            0,
            None,
            &d,
        )
        .expect("valid");
        assert_eq!(n.ordering_key, "a");
        assert_eq!(e["timestamp"], "2026-01-01T11:59:40.000Z");
        assert_eq!(e["originalTimestamp"], "2026-01-01T11:59:00.000Z");
    }

    #[test]
    fn merges_batch_context_under_event_context() {
        let ctx = obj(json!({"library": {"name": "batch"}, "os": {"name": "linux"}}));
        let integ = obj(json!({"All": false}));
        let d = BatchDefaults {
            context: Some(&ctx),
            integrations: Some(&integ),
            sent_at: None,
        };
        let (e, n) = run(
            json!({"userId": 42, "type": "identify",
            "context": {"library": {"name": "own"}, "locale": "de"}}),
            3,
            None,
            &d,
        )
        .expect("valid");
        let id = n.message_id;
        assert_eq!(n.ordering_key, "42");
        assert_eq!(e["context"]["locale"], "de");
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
        let none = BatchDefaults::default();
        let err = run(json!({"type": "track", "event": "E"}), 7, None, &none).expect_err("no id");
        assert_eq!((err.code, err.index), ("missing_identity", Some(7)));
        let err =
            run(json!({"type": "purchase", "userId": "u"}), 2, None, &none).expect_err("bad type");
        assert_eq!((err.code, err.index), ("invalid_type", Some(2)));
        let err =
            run(json!({"userId": "u"}), 0, Some(EventType::Track), &none).expect_err("no event");
        assert_eq!(err.code, "missing_field");
        let err = run(
            json!({"userId": "u", "event": "E", "sentAt": "yesterday"}),
            0,
            Some(EventType::Track),
            &none,
        )
        .expect_err("bad ts");
        assert_eq!(err.code, "invalid_timestamp");
    }

    fn track(v: Value) -> Result<Map<String, Value>, ApiError> {
        run(v, 0, Some(EventType::Track), &BatchDefaults::default()).map(|(e, _)| e)
    }

    #[test]
    fn refuses_events_nested_deeper_than_the_limit() {
        let mut deep = json!(1);
        for _ in 0..MAX_EVENT_DEPTH - 1 {
            deep = json!({ "a": deep });
        }
        // The event object and MAX_EVENT_DEPTH - 1 objects under it: exactly at the limit.
        track(json!({"userId": "u", "event": "E", "properties": deep.clone()})).expect("fits");
        let err = track(json!({"userId": "u", "event": "E", "properties": [deep.clone()]}))
            .expect_err("one level too deep");
        assert_eq!(err.code, "nesting_too_deep");
        // `context` is opened to add the client's address; its depth stays exact.
        track(json!({"userId": "u", "event": "E", "context": deep.clone()}))
            .expect("context at the limit fits");
        let err = track(json!({"userId": "u", "event": "E", "context": {"b": 1, "a": deep}}))
            .expect_err("context one level too deep");
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

    #[test]
    fn the_client_address_goes_into_an_absent_or_own_context_never_a_null_one() {
        let none = BatchDefaults::default();
        let (e, _) = run(json!({"userId": "u", "type": "page"}), 0, None, &none).expect("valid");
        assert_eq!(e["context"], json!({"ip": "10.1.2.3"}));
        let (e, _) = run(
            json!({"userId": "u", "type": "page", "context": null}),
            0,
            None,
            &none,
        )
        .expect("valid");
        assert_eq!(e["context"], Value::Null);
        let (e, _) = run(
            json!({"userId": "u", "type": "page", "context": {"ip": "1.1.1.1"}}),
            0,
            None,
            &none,
        )
        .expect("valid");
        assert_eq!(e["context"], json!({"ip": "1.1.1.1"}));
        let err = run(
            json!({"userId": "u", "type": "page", "context": [1]}),
            4,
            None,
            &none,
        )
        .expect_err("context must be an object");
        assert_eq!((err.code, err.index), ("invalid_field", Some(4)));
    }

    #[test]
    fn stored_text_keeps_the_clients_nested_text_and_sorts_the_top_level() {
        let text = r#"{"userId":"u","type":"track","event":"E","properties":{"b":1.50,"a":"\u00e9"},"writeKey":"k","messageId":"m"}"#;
        let mut e = Event::parse(text).expect("an object");
        let n = normalize_event(&mut e, 0, None, &BatchDefaults::default(), &req()).expect("valid");
        assert_eq!(n.message_id, "m");
        let stored = serde_json::to_string(&e).expect("encode");
        assert!(
            stored.starts_with(r#"{"context":{"ip":"10.1.2.3"},"event":"E","messageId":"m","#),
            "{stored}"
        );
        assert!(
            stored.contains(r#""properties":{"b":1.50,"a":"\u00e9"}"#),
            "{stored}"
        );
        assert!(!stored.contains("writeKey"), "{stored}");
    }

    #[test]
    fn only_times_written_as_keel_writes_them_are_kept_as_sent() {
        for (text, keep) in [
            ("2026-01-01T12:00:00.123Z", true),
            ("2026-01-01T12:00:00.12Z", false),
            ("2026-01-01T12:00:00.123+00:00", false),
            ("2026-01-01 12:00:00.123Z", false),
            ("2026-01-01T12:00:00.1234", false),
        ] {
            assert_eq!(canonical(text), keep, "{text}");
            if let Some(t) = parse_ts(text) {
                assert_eq!(format_ts(t) == text, keep, "{text}");
            }
        }
    }
}
