//! Fuzzes what the gateway does with a request body before storing it: header checks,
//! capped gzip inflation, and the handler's own parser (`src/http/parse.rs`: one event, or a
//! batch with batch-level context, then normalisation). Never a panic; errors are 4xx
//! with a code; an accepted event has its normalised fields and reads back as JSON even
//! nested inside the documents Keel stores it in.

#![no_main]

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use chrono::{TimeZone, Utc};
use keel_fuzz::http::body::{check_headers, inflate, Encoding};
use keel_fuzz::http::error::ApiError;
use keel_fuzz::http::event::Event;
use keel_fuzz::http::normalize::{EventType, RequestInfo};
use keel_fuzz::http::parse::{parse_request, Endpoint, Limits};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const MAX_REQUEST: usize = 512_000;

fn check_error(e: &ApiError) {
    assert!(
        (400..500).contains(&e.status.as_u16()),
        "bad input must be a 4xx: {e}"
    );
    assert!(!e.code.is_empty() && !e.message.is_empty());
}

fn check_event(stored: &Event<'_>, message_id: &str) {
    assert!(!message_id.is_empty());
    // Stored as its JSON text: it must read back as the same tree.
    let text = serde_json::to_string(stored).expect("encode");
    let event: Map<String, Value> =
        serde_json::from_str(&text).expect("the stored text reads back");
    assert_eq!(event, stored.to_map());
    let event = &event;
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

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    // Header checks on a label taken from the input.
    let split = rest.len().min((flags as usize >> 4) * 2);
    let (label, rest) = rest.split_at(split);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(label) {
        let name = if flags & 0x08 != 0 {
            "content-encoding"
        } else {
            "content-type"
        };
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
    let request = RequestInfo::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap(),
        Some("127.0.0.1".into()),
    );
    // The handler's own parser: one event for a single-event endpoint, else a batch.
    let endpoint = if flags & 2 == 0 {
        let types = [
            EventType::Identify,
            EventType::Track,
            EventType::Page,
            EventType::Screen,
            EventType::Group,
            EventType::Alias,
        ];
        Endpoint::Single(types[(flags as usize >> 2) % types.len()])
    } else {
        Endpoint::Batch
    };
    let limits = Limits {
        max_event_bytes: 32 * 1024,
    };
    match parse_request(endpoint, text, &limits, &request) {
        Ok(parsed) => {
            assert_eq!(parsed.events.len(), parsed.message_ids.len());
            assert_eq!(parsed.events.len(), parsed.ordering_keys.len());
            assert!(!parsed.events.is_empty());
            for (event, id) in parsed.events.iter().zip(&parsed.message_ids) {
                check_event(event, id);
            }
        }
        Err(e) => {
            check_error(&e);
            if let Some(i) = e.index {
                assert!(
                    endpoint == Endpoint::Batch || i == 0,
                    "a single event is index 0"
                );
            }
        }
    }
});
