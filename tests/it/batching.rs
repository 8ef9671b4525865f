//! Batched delivery: a router hands a batching kind several ready jobs at once (never two
//! of one user), the kind sends them in one request, and each event's outcome comes from
//! the answer — a webhook with `batch: true` (one JSON array), and a destination script
//! with `batch()`/`batchResponse()` whose local "vendor" reports per-item failures and
//! rate-limits with its own reset header.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::sink::{Responder, Sink, SinkMode};
use crate::common::*;

/// Events delivered to `sink` so far: every element of every 2xx array body.
fn delivered_events(sink: &Sink) -> Vec<Value> {
    sink.delivered()
        .into_iter()
        .flat_map(|b| b.as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_batching_webhook_sends_arrays_within_its_limit_never_two_of_one_user_and_in_user_order()
{
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace =
        workspace_with_webhooks(&[("hook", &sink.url, json!({"batch": true, "maxBatchSize": 5}))]);
    let keel = Keel::start(opts).await;
    let users = 6;
    let per_user = 10;
    let events: Vec<Value> = (0..per_user)
        .flat_map(|n| {
            (0..users).map(move |u| {
                json!({"type": "track", "userId": format!("u{u}"), "event": "Step",
                       "messageId": format!("u{u}-{n}"), "properties": {"n": n}})
            })
        })
        .collect();
    send_batches(&keel, &events, 20).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered_events(&sink).len() < events.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bodies = sink.delivered();
    let got = delivered_events(&sink);
    assert_eq!(got.len(), events.len(), "every event delivered once");
    let ids: HashSet<&str> = got.iter().filter_map(|e| e["messageId"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "no duplicates");
    let mut largest = 0;
    for body in &bodies {
        let batch = body
            .as_array()
            .expect("a batching webhook sends JSON arrays");
        largest = largest.max(batch.len());
        assert!(batch.len() <= 5, "maxBatchSize 5, got {}", batch.len());
        let users: HashSet<&str> = batch.iter().filter_map(|e| e["userId"].as_str()).collect();
        assert_eq!(
            users.len(),
            batch.len(),
            "one event per user per batch: {body}"
        );
    }
    assert!(largest > 1, "events were batched (largest batch {largest})");
    assert!(bodies.len() < events.len(), "fewer requests than events");
    // Per user, deliveries in the order the events were accepted.
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for e in &got {
        seen.entry(e["userId"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(e["properties"]["n"].as_u64().unwrap_or(99));
    }
    for (user, ns) in seen {
        assert_eq!(ns, (0..per_user).collect::<Vec<u64>>(), "order of {user}");
    }
}

/// A "vendor" that takes `{items: [...]}` and answers per item, like Braze's or Iterable's
/// bulk APIs: item `bad` is refused (400 with the vendor's message), item `flaky` fails
/// with 500 the first time, and the very first request is rate-limited with a 429 whose
/// only hint is `X-RateLimit-Reset` (seconds).
struct Vendor {
    accepted: Mutex<Vec<String>>,
    calls: Mutex<Vec<(Instant, u16)>>,
    flaky_failed: Mutex<bool>,
}

impl Vendor {
    fn answer(&self, body: &Value) -> (u16, String, String) {
        let mut calls = self.calls.lock().expect("calls");
        if calls.is_empty() {
            calls.push((Instant::now(), 429));
            return (
                429,
                "X-RateLimit-Reset: 1\r\n".into(),
                r#"{"message":"slow down"}"#.into(),
            );
        }
        calls.push((Instant::now(), 200));
        let mut errors = Vec::new();
        for (i, item) in body["items"].as_array().into_iter().flatten().enumerate() {
            let id = item["id"].as_str().unwrap_or_default().to_owned();
            if id == "bad" {
                errors.push(
                    json!({"index": i, "code": 400, "message": "invalid email address for bad"}),
                );
            } else if id == "flaky" && !*self.flaky_failed.lock().expect("flag") {
                *self.flaky_failed.lock().expect("flag") = true;
                errors.push(json!({"index": i, "code": 500, "message": "try again later"}));
            } else {
                self.accepted.lock().expect("accepted").push(id);
            }
        }
        (
            200,
            String::new(),
            json!({"message": "success", "errors": errors}).to_string(),
        )
    }
}

const BATCH_SCRIPT: &str = r#"
export const maxBatchSize = 10;
export function process(event, destination) {
  return { method: "POST", endpoint: destination.Config.url, headers: {}, params: {},
           body: { JSON: { id: event.messageId, user: event.userId } } };
}
export function batch(requests, destination) {
  return [{ request: { method: "POST", endpoint: destination.Config.url, headers: {}, params: {},
                       body: { JSON: { items: requests.map((r) => r.body.JSON) } } },
            events: requests.map((_, i) => i) }];
}
export function batchResponse(response, requests) {
  if (response.status !== 200) return null;
  const errors = response.body.errors ?? [];
  return requests.map((_, i) => {
    const e = errors.find((x) => x.index === i);
    return e ? { status: e.code, error: e.message } : null;
  });
}
"#;

#[tokio::test]
async fn a_batch_partial_failure_retries_and_dead_letters_only_its_events_in_user_order() {
    let db = TestDb::create().await;
    let vendor = Arc::new(Vendor {
        accepted: Mutex::new(Vec::new()),
        calls: Mutex::new(Vec::new()),
        flaky_failed: Mutex::new(false),
    });
    let v = vendor.clone();
    let sink = Sink::start(SinkMode::Answer(Responder::new(move |_, body| {
        v.answer(body)
    })))
    .await;
    let scripts = tempfile::tempdir().expect("dir");
    let folder = scripts.path().join("destinations/BULKY");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(folder.join("transform.js"), BATCH_SCRIPT).expect("script");
    let mut opts = fast_router(KeelOptions::new(&db)).env(
        "KEEL_TRANSFORM__SCRIPTS_DIR",
        &scripts.path().display().to_string(),
    );
    opts.workspace = json!({"sources": [{"id": "src", "name": "Test", "writeKey": WRITE_KEY,
        "enabled": true, "destinations": [{"id": "bulk", "name": "Bulk", "enabled": true,
        "config": {"url": sink.url}, "destinationDefinition": {"name": "BULKY"}}]}]});
    let keel = Keel::start(opts).await;
    let track = |user: &str, id: &str| json!({"type": "track", "userId": user, "event": "E", "messageId": id});
    let events = vec![
        track("u1", "a1"),
        track("u2", "flaky"),
        track("u3", "bad"),
        track("u4", "a4"),
        track("u2", "after-flaky"),
    ];
    send_batches(&keel, &events, 5).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while vendor.accepted.lock().expect("accepted").len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = vendor.accepted.lock().expect("accepted").clone();
    let mut sorted = accepted.clone();
    sorted.sort();
    assert_eq!(sorted, ["a1", "a4", "after-flaky", "flaky"], "{accepted:?}");
    let pos = |id: &str| accepted.iter().position(|a| a == id).expect("accepted");
    assert!(
        pos("flaky") < pos("after-flaky"),
        "u2's second event waits for its first: {accepted:?}"
    );
    // The 429 carried only X-RateLimit-Reset: 1; the retry waited for it.
    let calls = vendor.calls.lock().expect("calls").clone();
    assert_eq!(calls[0].1, 429);
    let waited = calls[1].0 - calls[0].0;
    assert!(
        waited >= Duration::from_millis(900),
        "retried {waited:?} after a 429 that said 1 s"
    );
    // Only `bad` is dead-lettered, with the vendor's own words.
    let (_, dlq) = keel.admin_get("/admin/dlq?destination=bulk").await;
    let jobs = dlq["jobs"].as_array().cloned().unwrap_or_default();
    assert_eq!(jobs.len(), 1, "{dlq}");
    assert_eq!(jobs[0]["message_id"], "bad");
    assert!(
        jobs[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid email address for bad"),
        "{dlq}"
    );
    // Batches: three requests at most for five events after the rate limit (the 429'd
    // batch, the retried one, and the ones for flaky/after-flaky).
    assert!(calls.len() <= 5, "{} calls", calls.len());
}
