//! Fuzzes what the gateway does with a request body before storing it: header checks,
//! capped gzip inflation, JSON parsing in the shapes the ingest endpoints accept (one event,
//! or a batch with batch-level context), and normalisation. Never a panic; errors are 4xx
//! with a code; an accepted event has its normalised fields and reads back as JSON even
//! nested inside the documents Keel stores it in.

#![no_main]

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use chrono::{TimeZone, Utc};
use keel_fuzz::http::body::{check_headers, inflate, Encoding};
use keel_fuzz::http::error::ApiError;
use keel_fuzz::http::normalize::{normalize_event, BatchDefaults, EventType, RequestInfo};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

const MAX_REQUEST: usize = 512_000;

#[derive(serde::Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    integrations: Option<Value>,
    #[serde(default, rename = "sentAt")]
    sent_at: Option<Value>,
}

fn check_error(e: &ApiError) {
    assert!(
        (400..500).contains(&e.status.as_u16()),
        "bad input must be a 4xx: {e}"
    );
    assert!(!e.code.is_empty() && !e.message.is_empty());
}

fn check_event(event: &Map<String, Value>, message_id: &str) {
    assert!(!message_id.is_empty());
    assert_eq!(event["messageId"].as_str(), Some(message_id));
    assert!(EventType::parse(event["type"].as_str().expect("type")).is_some());
    for field in ["receivedAt", "timestamp"] {
        let t = event[field].as_str().expect("timestamp field");
        chrono::DateTime::parse_from_rfc3339(t).expect("stored timestamps are RFC 3339");
    }
    assert!(!event.contains_key("writeKey"));
    // Stored in a request's array, delivered inside a request description: must read back.
    let text = serde_json::to_string(event).expect("encode");
    let wrapped = format!("[{{\"body\":{{\"JSON\":[{text}]}}}}]");
    serde_json::from_str::<Value>(&wrapped).expect("a stored event reads back");
}

fn object(v: &Option<Value>) -> Result<Option<&Map<String, Value>>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    // Header checks on a label taken from the input.
    let split = rest.len().min((flags as usize >> 4) * 2);
    let (label, rest) = rest.split_at(split);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(label) {
        let name = if flags & 0x08 != 0 { "content-encoding" } else { "content-type" };
        headers.insert(HeaderName::from_static(name), v);
    }
    if let Err(e) = check_headers(&headers) {
        check_error(&e);
    }
    let body = match flags & 1 {
        1 => match inflate(rest, MAX_REQUEST) {
            Ok(b) => {
                assert!(b.len() <= MAX_REQUEST);
                b
            }
            Err(e) => return check_error(&e),
        },
        _ => rest.to_vec(),
    };
    let _ = Encoding::Identity;
    let Ok(text) = std::str::from_utf8(&body) else {
        return;
    };
    let request = RequestInfo {
        received_at: Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap(),
        ip: Some("127.0.0.1".into()),
    };
    if flags & 2 == 0 {
        let types = [
            EventType::Identify,
            EventType::Track,
            EventType::Page,
            EventType::Screen,
            EventType::Group,
            EventType::Alias,
        ];
        let ty = types[(flags as usize >> 2) % types.len()];
        let Ok(Value::Object(mut event)) = serde_json::from_str::<Value>(text) else {
            return;
        };
        match normalize_event(&mut event, 0, Some(ty), &BatchDefaults::default(), &request) {
            Ok(id) => check_event(&event, &id),
            Err(e) => check_error(&e),
        }
    } else {
        let Ok(parsed) = serde_json::from_str::<BatchBody<'_>>(text) else {
            return;
        };
        let (Ok(context), Ok(integrations)) = (object(&parsed.context), object(&parsed.integrations))
        else {
            return;
        };
        let defaults = BatchDefaults {
            context,
            integrations,
            sent_at: parsed.sent_at.as_ref(),
        };
        for (i, raw) in parsed.batch.iter().enumerate() {
            let Ok(Value::Object(mut event)) = serde_json::from_str::<Value>(raw.get()) else {
                continue;
            };
            match normalize_event(&mut event, i, None, &defaults, &request) {
                Ok(id) => check_event(&event, &id),
                Err(e) => {
                    check_error(&e);
                    assert_eq!(e.index, Some(i), "a batch error names its event");
                }
            }
        }
    }
});
