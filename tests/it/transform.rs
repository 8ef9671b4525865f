//! JavaScript transformations end to end: user transformations that enrich, filter, split,
//! use `metadata()`, `log()`, a library, `async` + `fetch`; scripts that throw, loop or
//! exhaust their heap dead-letter only their own events while the rest flows; a reload that
//! swaps a script loses nothing; destination scripts (GA4, Amplitude, Mixpanel, Slack)
//! send the real APIs' request shapes to local servers and match their fixtures; the
//! `keel transform test` CLI.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_actors::transform::{
    load_libraries, CallItem, CallResults, ItemResult, Script, ScriptKind, TransformPool,
    TransformSettings,
};
use serde_json::{json, Map, Value};

use crate::common::sink::{Received, Sink, SinkMode};
use crate::common::*;

fn script_path(name: &str) -> String {
    repo_root()
        .join("tests/scripts")
        .join(name)
        .display()
        .to_string()
}

/// A webhook destination with `transformations`.
fn hook(id: &str, url: &str, transformations: Value) -> Value {
    json!({"id": id, "name": format!("Hook {id}"), "enabled": true,
           "config": {"webhookUrl": url},
           "destinationDefinition": {"name": "WEBHOOK"},
           "transformations": transformations})
}

fn workspace_of(dests: Vec<Value>) -> Value {
    json!({"sources": [{"id": SOURCE_ID, "name": "Test", "writeKey": WRITE_KEY, "enabled": true,
                        "destinations": dests}]})
}

fn track(user: &str, event: &str, id: &str, props: Value) -> Value {
    json!({"type": "track", "userId": user, "event": event, "messageId": id, "properties": props})
}

async fn dlq(keel: &Keel, destination: &str) -> Vec<Value> {
    let (_, body) = keel
        .admin_get(&format!("/admin/dlq?destination={destination}"))
        .await;
    body["jobs"].as_array().cloned().unwrap_or_default()
}

/// Reloads the workspace through the admin API, asserting it was applied.
async fn reload(keel: &Keel) {
    let (status, body) = keel.admin_reload().await;
    assert_eq!(status, 200, "{body}");
}

async fn wait_dlq(keel: &Keel, destination: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = dlq(keel, destination).await;
        if jobs.len() >= n || Instant::now() > deadline {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn by_message(sink: &Sink) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for b in sink.delivered() {
        if let Some(id) = b["messageId"].as_str() {
            out.entry(id.to_owned()).or_default().push(b);
        }
    }
    out
}

fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn user_transformations_enrich_filter_split_batch_and_fetch() {
    let db = TestDb::create().await;
    let enriched = Sink::start(SinkMode::Ok).await;
    let looked_up = Sink::start(SinkMode::Ok).await;
    let batched = Sink::start(SinkMode::Ok).await;
    let lookup_server = Sink::start(SinkMode::Ok).await;
    let ws = workspace_of(vec![
        hook(
            "enrich",
            &enriched.url,
            json!([{"name": "enrich", "file": script_path("enrich.js")}]),
        ),
        hook(
            "lookup",
            &looked_up.url,
            json!([{"name": "lookup", "file": script_path("lookup.js")}]),
        ),
        hook(
            "batch",
            &batched.url,
            json!([{"name": "batch", "file": script_path("batch.js")}]),
        ),
    ]);
    let mut opts =
        fast_router(KeelOptions::new(&db)).env("KEEL_LOG", "info,keel_actors::transform=debug");
    opts.workspace = ws;
    let keel = Keel::start(opts).await;
    let lookup = lookup_server.url.clone();
    let mut events = vec![
        track("u1", "Buy", "m1", json!({"lookup": lookup, "sku": "a"})),
        track("u1", "Drop me", "m2", json!({"lookup": lookup})),
        track("u2", "Split", "m3", json!({"lookup": lookup})),
    ];
    events.push(
        json!({"type": "identify", "userId": "u3", "messageId": "m4",
        "context": {"traits": {"email": "alice@example.com"}}, "properties": {"lookup": lookup}}),
    );
    send_batches(&keel, &events, 4).await;

    // enrich: m2 dropped, m3 split in two, metadata and the pii library applied.
    assert_eq!(enriched.wait_delivered(4, Duration::from_secs(20)).await, 4);
    let got = by_message(&enriched);
    assert!(!got.contains_key("m2"), "dropped event delivered: {got:?}");
    let m1 = &got["m1"][0];
    assert_eq!(m1["properties"]["enriched"], true);
    assert_eq!(m1["properties"]["destinationId"], "enrich");
    assert_eq!(m1["properties"]["sourceName"], "Test");
    assert_eq!(m1["properties"]["metaMessageId"], "m1");
    let split: HashSet<&str> = got["m3"]
        .iter()
        .filter_map(|b| b["event"].as_str())
        .collect();
    assert_eq!(split, HashSet::from(["Split", "Split part 2"]));
    assert_eq!(
        got["m4"][0]["context"]["traits"]["email"],
        "a***************m"
    );

    // lookup: async transformEvent with fetch + fetchV2 against a local server.
    assert_eq!(
        looked_up.wait_delivered(4, Duration::from_secs(20)).await,
        4
    );
    for b in looked_up.delivered() {
        assert_eq!(b["properties"]["lookedUp"], true, "{b}");
        assert_eq!(b["properties"]["lookupStatus"], 200, "{b}");
    }
    let lookups = lookup_server.received();
    assert!(lookups
        .iter()
        .any(|r| r.target.starts_with("GET /hook?user=u1")));
    assert!(lookups
        .iter()
        .any(|r| r.target.starts_with("POST /hook?user=u2") && r.body["user"] == "u2"));

    // batch: transformBatch drops and annotates with metadata(e).
    assert_eq!(batched.wait_delivered(3, Duration::from_secs(20)).await, 3);
    let got = by_message(&batched);
    assert!(!got.contains_key("m2"));
    assert_eq!(got["m1"][0]["properties"]["batched"], true);
    assert_eq!(got["m1"][0]["properties"]["dest"], "batch");

    // log() lines reach the debug log; the drop is explained per destination.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        keel.log_text().contains("enriched m1"),
        "no script log line"
    );
    let metrics = keel.metrics().await;
    assert!(
        metric(
            &metrics,
            "keel_transform_events_dropped_total{reason=\"filtered\",script=\"enrich\"}"
        ) >= 1.0
            || metric(
                &metrics,
                "keel_transform_events_dropped_total{script=\"enrich\",reason=\"filtered\"}"
            ) >= 1.0,
        "{metrics}"
    );
    assert!(metric(&metrics, "keel_transform_calls_total") >= 3.0);
    assert!(metric(&metrics, "keel_transform_fetches_total") >= 8.0);
    let (_, doc) = keel.admin_get("/admin/events/m2").await;
    assert!(
        doc.to_string().contains("dropped by transformation enrich"),
        "{doc}"
    );
}

#[tokio::test]
async fn failing_scripts_dead_letter_only_their_own_events() {
    let db = TestDb::create().await;
    let faulty_sink = Sink::start(SinkMode::Ok).await;
    let plain = Sink::start(SinkMode::Ok).await;
    let dir = tempfile::tempdir().expect("dir");
    let script = dir.path().join("faulty.js");
    std::fs::copy(script_path("faulty.js"), &script).expect("copy");
    let ws = workspace_of(vec![
        hook(
            "faulty",
            &faulty_sink.url,
            json!([{"name": "faulty", "file": script.display().to_string()}]),
        ),
        hook("plain", &plain.url, json!([])),
    ]);
    let mut opts = fast_router(KeelOptions::new(&db))
        .env("KEEL_TRANSFORM__CALL_TIMEOUT_MS", "2000")
        .env("KEEL_TRANSFORM__HEAP_LIMIT_MB", "64");
    opts.workspace = ws.clone();
    let keel = Keel::start(opts).await;

    // A throwing event among good ones: only it is dead-lettered, with the stack.
    let first: Vec<Value> = (0..10)
        .map(|i| {
            let ev = if i == 4 { "Boom" } else { "Fine" };
            track(&format!("u{}", i % 3), ev, &format!("a{i}"), json!({}))
        })
        .collect();
    send_batches(&keel, &first, 10).await;
    assert_eq!(
        faulty_sink.wait_delivered(9, Duration::from_secs(20)).await,
        9
    );
    let dead = wait_dlq(&keel, "faulty", 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["message_id"], "a4");
    assert_eq!(dead[0]["stage"], "transform");
    let reason = dead[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("boom for a4") && reason.contains("faulty.js"),
        "{reason}"
    );

    // An endless loop and a heap hog, each alone in its call: stopped within the budget /
    // at the heap cap, dead-lettered, isolate recreated; a 1 GB buffer is refused.
    for (n, (event, expect)) in [
        ("Loop", "budget"),
        ("Hog", "heap cap"),
        // Refused by the capped allocator, or stopped at the heap cap while V8 collects.
        ("Buffer", "B"),
    ]
    .into_iter()
    .enumerate()
    {
        let started = Instant::now();
        let id = format!("f{n}");
        send_batches(&keel, &[track("u9", event, &id, json!({}))], 1).await;
        let dead = wait_dlq(&keel, "faulty", 2 + n).await;
        let letter = dead
            .iter()
            .find(|d| d["message_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{event} not dead-lettered: {dead:?}"));
        let reason = letter["reason"].as_str().unwrap_or_default();
        let ok = if expect == "B" {
            reason.contains("Array buffer allocation failed") || reason.contains("heap cap")
        } else {
            reason.contains(expect)
        };
        assert!(ok, "{event}: {reason}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{event} took {:?}",
            started.elapsed()
        );
    }

    // Other events keep flowing through the same destination; the plain one got everything.
    let later: Vec<Value> = (0..5)
        .map(|i| track("u1", "Fine", &format!("b{i}"), json!({})))
        .collect();
    send_batches(&keel, &later, 5).await;
    assert_eq!(
        faulty_sink
            .wait_delivered(14, Duration::from_secs(20))
            .await,
        14
    );
    assert_eq!(plain.wait_delivered(18, Duration::from_secs(20)).await, 18);
    for b in faulty_sink.delivered() {
        assert_eq!(b["properties"]["checked"], true);
    }
    let metrics = keel.metrics().await;
    assert!(
        metric(
            &metrics,
            "keel_transform_isolate_restarts_total{reason=\"timeout\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "keel_transform_isolate_restarts_total{reason=\"heap\"}"
        ) >= 1.0
    );

    // Fix the script, reload, replay: the dead letters go through the new script.
    std::fs::write(
        &script,
        "export function transformEvent(e) { e.properties = { ...e.properties, fixed: true }; return e; }",
    )
    .expect("rewrite");
    reload(&keel).await;
    let (_, body) = keel
        .admin_post("/admin/dlq/replay", &json!({"destination": "faulty"}))
        .await;
    assert_eq!(body["retransformed"], 4, "{body}");
    assert_eq!(
        faulty_sink
            .wait_delivered(18, Duration::from_secs(20))
            .await,
        18
    );
    let got = by_message(&faulty_sink);
    for id in ["a4", "f0", "f1", "f2"] {
        assert_eq!(got[id][0]["properties"]["fixed"], true, "{id}");
    }
    assert!(dlq(&keel, "faulty").await.is_empty());
}

#[tokio::test]
async fn a_reload_that_swaps_a_script_loses_nothing() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let script_src = |v: u32| {
        format!("export function transformEvent(e) {{ e.properties = {{ ...e.properties, version: {v} }}; return e; }}")
    };
    // The script sits beside the workspace file (Keel's temp dir) and is named relatively:
    // start without it, write both, reload.
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = workspace_of(vec![]);
    let keel = Keel::start(opts).await;
    let dir = keel.ws_path.parent().expect("dir").to_owned();
    std::fs::write(dir.join("version.js"), script_src(1)).expect("v1");
    keel.write_workspace(&workspace_of(vec![hook(
        "v",
        &sink.url,
        json!([{"name": "version", "file": "version.js"}]),
    )]));
    reload(&keel).await;
    let dir = keel.ws_path.parent().expect("dir").to_owned();
    let url = keel.url("/v1/batch");
    let sender = tokio::spawn(async move {
        let client = http();
        let mut sent = Vec::new();
        for round in 0..60 {
            let batch: Vec<Value> = (0..5)
                .map(|u| {
                    let id = format!("r{round}-{u}");
                    sent.push((format!("u{u}"), id.clone()));
                    track(&format!("u{u}"), "Step", &id, json!({"round": round}))
                })
                .collect();
            post_batch(&client, &url, &batch).await;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    std::fs::write(dir.join("version.js"), script_src(2)).expect("v2");
    reload(&keel).await;
    let sent = sender.await.expect("sender");
    assert_eq!(
        sink.wait_delivered(sent.len(), Duration::from_secs(30))
            .await,
        sent.len()
    );
    let got = by_message(&sink);
    let mut versions_by_user: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for (user, id) in &sent {
        let b = got.get(id).unwrap_or_else(|| panic!("{id} lost"));
        let v = b[0]["properties"]["version"].as_u64().expect("version");
        let round = b[0]["properties"]["round"].as_u64().expect("round");
        versions_by_user
            .entry(user.clone())
            .or_default()
            .push((round, v));
    }
    // Per user, delivery order is send order and the version never goes back.
    let delivered_order: Vec<String> = sink
        .delivered()
        .iter()
        .filter_map(|b| b["messageId"].as_str().map(str::to_owned))
        .collect();
    for u in 0..5 {
        let user = format!("u{u}");
        let mine: Vec<&String> = delivered_order
            .iter()
            .filter(|id| id.ends_with(&format!("-{u}")))
            .collect();
        let expected: Vec<String> = sent
            .iter()
            .filter(|(s, _)| *s == user)
            .map(|(_, id)| id.clone())
            .collect();
        let firsts: Vec<String> = {
            let mut seen = HashSet::new();
            mine.into_iter()
                .filter(|id| seen.insert((*id).clone()))
                .cloned()
                .collect()
        };
        assert_eq!(firsts, expected, "order for {user}");
        let vs = &versions_by_user[&user];
        assert!(vs.windows(2).all(|w| w[0].1 <= w[1].1), "{user}: {vs:?}");
    }
    let all: Vec<u64> = versions_by_user
        .values()
        .flatten()
        .map(|(_, v)| *v)
        .collect();
    assert!(all.contains(&1) && all.contains(&2), "{all:?}");
}

/// `http://127.0.0.1:PORT` of a sink.
fn origin(sink: &Sink) -> String {
    sink.url.trim_end_matches("/hook").to_owned()
}

fn script_dest(id: &str, kind: &str, config: Value) -> Value {
    json!({"id": id, "name": format!("{kind} test"), "enabled": true, "config": config,
           "destinationDefinition": {"name": kind, "displayName": kind}})
}

fn one<'a>(got: &'a [Received], prefix: &str) -> &'a Received {
    got.iter()
        .find(|r| r.target.starts_with(prefix))
        .unwrap_or_else(|| {
            panic!(
                "no request {prefix}: {:?}",
                got.iter().map(|r| &r.target).collect::<Vec<_>>()
            )
        })
}

#[tokio::test]
async fn destination_scripts_send_each_apis_request_shape() {
    let db = TestDb::create().await;
    let ga4 = Sink::start(SinkMode::Ok).await;
    let am = Sink::start(SinkMode::Ok).await;
    let mp = Sink::start(SinkMode::Ok).await;
    let slack = Sink::start(SinkMode::Ok).await;
    let ws = workspace_of(vec![
        script_dest(
            "ga",
            "GA4",
            json!({"measurementId": "G-TEST123", "apiSecret": "ga-secret", "apiBaseUrl": origin(&ga4)}),
        ),
        script_dest(
            "amp",
            "AM",
            json!({"apiKey": "am-key", "apiBaseUrl": origin(&am)}),
        ),
        script_dest(
            "mix",
            "MP",
            json!({"token": "mp-token", "apiSecret": "mp-secret", "dataResidency": "eu", "apiBaseUrl": origin(&mp)}),
        ),
        script_dest("sl", "SLACK", json!({"webhookUrl": slack.url})),
    ]);
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = ws;
    let keel = Keel::start(opts).await;
    let events = vec![
        json!({"type": "identify", "userId": "user-1", "anonymousId": "anon-1", "messageId": "i1",
               "timestamp": "2026-11-23T10:00:00.000Z",
               "traits": {"email": "ann@example.com", "name": "Ann"}}),
        json!({"type": "track", "userId": "user-1", "anonymousId": "anon-1", "messageId": "t1",
               "timestamp": "2026-11-23T10:00:01.000Z", "event": "Order Completed",
               "properties": {"order_id": "o-1", "revenue": 42.5, "currency": "EUR",
                              "products": [{"product_id": "p1", "name": "Boot", "price": 42.5, "quantity": 1}]}}),
        json!({"type": "page", "userId": "user-1", "anonymousId": "anon-1", "messageId": "p1",
               "timestamp": "2026-11-23T10:00:02.000Z", "name": "Pricing",
               "properties": {"url": "https://example.com/pricing", "title": "Pricing"}}),
    ];
    send_batches(&keel, &events, 3).await;

    // GA4 Measurement Protocol: POST /mp/collect?measurement_id&api_secret, client_id, events[].
    assert_eq!(ga4.wait_delivered(3, Duration::from_secs(20)).await, 3);
    let got = ga4.received();
    for r in &got {
        assert!(r.target.starts_with("POST /mp/collect?"), "{}", r.target);
        assert!(
            r.target.contains("measurement_id=G-TEST123")
                && r.target.contains("api_secret=ga-secret")
        );
        assert_eq!(r.body["client_id"], "anon-1");
        assert_eq!(r.body["user_id"], "user-1");
        assert!(r.body["events"][0]["name"].is_string());
    }
    let purchase = got
        .iter()
        .find(|r| r.body["events"][0]["name"] == "purchase")
        .expect("purchase");
    assert_eq!(
        purchase.body["events"][0]["params"]["transaction_id"],
        "o-1"
    );
    assert_eq!(
        purchase.body["events"][0]["params"]["items"][0]["item_id"],
        "p1"
    );
    assert_eq!(purchase.body["timestamp_micros"], 1_795_428_001_000_000i64);
    assert!(got
        .iter()
        .any(|r| r.body["events"][0]["name"] == "page_view"
            && r.body["events"][0]["params"]["page_location"] == "https://example.com/pricing"));
    assert!(got.iter().any(|r| r.body["events"][0]["name"] == "login"
        && r.body["user_properties"]["email"]["value"] == "ann@example.com"));

    // Amplitude HTTP V2: POST /2/httpapi with api_key and events[] (user_id, event_type, time).
    assert_eq!(am.wait_delivered(3, Duration::from_secs(20)).await, 3);
    let got = am.received();
    for r in &got {
        assert!(r.target.starts_with("POST /2/httpapi"), "{}", r.target);
        assert_eq!(r.body["api_key"], "am-key");
        let e = &r.body["events"][0];
        assert_eq!(e["user_id"], "user-1");
        assert_eq!(e["device_id"], "anon-1");
        assert!(e["time"].as_i64().is_some() && e["insert_id"].is_string());
    }
    let types: HashSet<&str> = got
        .iter()
        .filter_map(|r| r.body["events"][0]["event_type"].as_str())
        .collect();
    assert_eq!(
        types,
        HashSet::from(["$identify", "Order Completed", "Viewed Pricing Page"])
    );

    // Mixpanel: /import with Basic auth (API secret) and strict=1; /engage for profiles.
    assert_eq!(mp.wait_delivered(4, Duration::from_secs(20)).await, 4);
    let got = mp.received();
    let track = got
        .iter()
        .find(|r| r.body[0]["event"] == "Order Completed")
        .expect("import of the track");
    assert!(
        track.target.starts_with("POST /import?strict=1"),
        "{}",
        track.target
    );
    assert_eq!(track.headers["authorization"], "Basic bXAtc2VjcmV0Og==");
    let p = &track.body[0]["properties"];
    assert_eq!(p["distinct_id"], "user-1");
    assert_eq!(p["$insert_id"], "t1");
    assert_eq!(p["time"], 1_795_428_001_000i64);
    assert_eq!(p["token"], "mp-token");
    let engage = one(&got, "POST /engage");
    assert_eq!(engage.body[0]["$token"], "mp-token");
    assert_eq!(engage.body[0]["$distinct_id"], "user-1");
    assert_eq!(engage.body[0]["$set"]["$email"], "ann@example.com");
    assert!(got.iter().any(|r| r.body[0]["event"] == "$identify"));
    assert!(got.iter().any(|r| r.body[0]["event"] == "Loaded a Page"));

    // Slack incoming webhook: {"text"} for identify and track; page is refused (DLQ).
    assert_eq!(slack.wait_delivered(2, Duration::from_secs(20)).await, 2);
    let texts: HashSet<String> = slack
        .delivered()
        .iter()
        .filter_map(|b| b["text"].as_str().map(str::to_owned))
        .collect();
    assert!(texts.contains("user-1 did Order Completed"), "{texts:?}");
    assert!(
        texts.iter().any(|t| t.starts_with("Identified Ann")),
        "{texts:?}"
    );
    let dead = wait_dlq(&keel, "sl", 1).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("not supported"));
}

#[tokio::test]
async fn a_destination_script_5xx_is_retried_by_the_router_and_4xx_dead_letters() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let scripts = tempfile::tempdir().expect("dir");
    let folder = scripts.path().join("destinations/Flaky");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(
        folder.join("transform.js"),
        r#"export function process(event, destination) {
  if (event.event === "Bad") { const e = new Error("bad event"); e.status = 400; throw e; }
  if (Date.now() < destination.Config.failUntil) {
    const e = new Error("upstream not ready"); e.status = 503; throw e;
  }
  return { method: "POST", endpoint: destination.Config.url, body: { JSON: { messageId: event.messageId, userId: event.userId } } };
}"#,
    )
    .expect("script");
    let fail_until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        + 4000;
    let mut opts = fast_router(KeelOptions::new(&db))
        .env("KEEL_ROUTER__MAX_ATTEMPTS", "1000")
        .env(
            "KEEL_TRANSFORM__SCRIPTS_DIR",
            &scripts.path().display().to_string(),
        );
    opts.workspace = workspace_of(vec![script_dest(
        "fl",
        "flaky",
        json!({"url": sink.url, "failUntil": fail_until}),
    )]);
    let keel = Keel::start(opts).await;
    let events: Vec<Value> = (0..6)
        .map(|i| {
            let ev = if i == 3 { "Bad" } else { "Fine" };
            track(&format!("u{}", i % 2), ev, &format!("s{i}"), json!({}))
        })
        .collect();
    send_batches(&keel, &events, 6).await;
    let dead = wait_dlq(&keel, "fl", 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["message_id"], "s3");
    assert!(dead[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("bad event"));
    // Nothing goes out while the script answers 503; then the router's retries succeed.
    assert_eq!(sink.delivered().len(), 0);
    assert_eq!(sink.wait_delivered(5, Duration::from_secs(40)).await, 5);
    let order: Vec<String> = sink
        .delivered()
        .iter()
        .filter(|b| b["userId"] == "u1")
        .filter_map(|b| b["messageId"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(order, vec!["s1", "s5"]);
}

fn keel_cli() -> Command {
    let mut cmd = keel_command();
    cmd.current_dir(repo_root())
        .env("KEEL_TRANSFORM__CALL_TIMEOUT_MS", "500");
    cmd
}

fn write_json(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).expect("write");
    p
}

#[test]
fn transform_test_cli_prints_results_logs_and_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let run = |script: &str, event: Value| {
        let ev = write_json(dir.path(), "event.json", &event);
        keel_cli()
            .args(["transform", "test", script, "--event"])
            .arg(&ev)
            .output()
            .expect("run keel")
    };
    let enrich = script_path("enrich.js");
    let out = run(&enrich, track("u1", "Buy", "c1", json!({})));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(v["properties"]["enriched"], true);
    assert!(String::from_utf8_lossy(&out.stderr).contains("log: enriched c1"));

    let out = run(&enrich, track("u1", "Drop me", "c2", json!({})));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "null");

    let out = run(&enrich, track("u1", "Split", "c3", json!({})));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(2));

    let faulty = script_path("faulty.js");
    let out = run(&faulty, track("u1", "Boom", "c4", json!({})));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("boom for c4") && err.contains("faulty.js:"),
        "{err}"
    );

    let started = Instant::now();
    let out = run(&faulty, track("u1", "Loop", "c5", json!({})));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("budget"));
    assert!(started.elapsed() < Duration::from_secs(10));

    // A destination script with a destination file in the workspace's shape.
    let dest = write_json(
        dir.path(),
        "dest.json",
        &json!({"id": "d", "name": "Slack", "config": {"webhookUrl": "https://hooks.slack.com/services/T/B/X"},
                "destinationDefinition": {"name": "SLACK"}}),
    );
    let ev = write_json(dir.path(), "ev.json", &track("u1", "Buy", "c6", json!({})));
    let out = keel_cli()
        .args([
            "transform",
            "test",
            "transformer-scripts/destinations/slack/transform.js",
            "--event",
        ])
        .arg(&ev)
        .arg("--destination")
        .arg(&dest)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["endpoint"], "https://hooks.slack.com/services/T/B/X");
    assert_eq!(v["body"]["JSON"]["text"], "u1 did Buy");
}

#[test]
fn script_fetch_refuses_private_addresses_unless_allowed() {
    let dir = tempfile::tempdir().expect("dir");
    let ev = write_json(
        dir.path(),
        "event.json",
        &track("u1", "Buy", "p1", json!({"lookup": "http://127.0.0.1:9/x"})),
    );
    let out = keel_cli()
        .env_remove("KEEL_ALLOW_PRIVATE_TARGETS")
        .args(["transform", "test", &script_path("lookup.js"), "--event"])
        .arg(&ev)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a public address"), "{err}");
    // Allowed: the request is made (and fails to connect to the closed port instead).
    let out = keel_cli()
        .env("KEEL_ALLOW_PRIVATE_TARGETS", "true")
        .args(["transform", "test", &script_path("lookup.js"), "--event"])
        .arg(&ev)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("is not a public address") && err.contains("fetch failed"),
        "{err}"
    );
}

#[test]
fn check_config_compiles_every_script() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("broken.js"),
        "export function transformEvent(e) {\n  return e +;\n}\n",
    )
    .expect("script");
    std::fs::write(dir.path().join("noexport.js"), "export const x = 1;\n").expect("script");
    let ws = workspace_of(vec![hook(
        "d1",
        "https://example.com/hook",
        json!([{"name": "broken", "file": "broken.js"}, {"name": "noexport", "file": "noexport.js"},
               {"name": "missing", "file": "missing.js"}]),
    )]);
    let ws_path = write_json(dir.path(), "workspace.json", &ws);
    let out = keel_cli()
        .args(["check-config", "--workspace"])
        .arg(&ws_path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("$.sources[0].destinations[0].transformations[2].file")
            && err.contains("missing.js"),
        "{err}"
    );
    // Once the file exists, the two bad scripts are reported with file and line.
    std::fs::write(
        dir.path().join("missing.js"),
        "export function transformEvent(e) { return e; }",
    )
    .expect("script");
    let out = keel_cli()
        .args(["check-config", "--workspace"])
        .arg(&ws_path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.js:2") && err.contains("SyntaxError"),
        "{err}"
    );
    assert!(
        err.contains("noexport.js") && err.contains("must export"),
        "{err}"
    );
}

#[tokio::test]
async fn the_admin_token_can_come_from_keel_admin_token() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db).env("KEEL_ADMIN_TOKEN", "from-env")).await;
    let status = |token: &'static str| {
        let url = keel.url("/admin/dlq");
        async move {
            http()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("admin")
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("from-env").await, 200);
    assert_eq!(status("admin-secret").await, 401);
}

/// One fixture: an event and a destination config in, the requests (or the error) out.
fn check_fixture(
    pool: &TransformPool,
    script: &Arc<Script>,
    path: &Path,
    rt: &tokio::runtime::Handle,
) -> Result<(), String> {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(path).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    let event: Map<String, Value> = fixture["event"].as_object().cloned().ok_or("no event")?;
    let destination = json!({"ID": "fixture", "Name": "fixture",
        "Config": fixture["config"], "DestinationDefinition": {"Name": script.name}});
    let meta = Value::Null;
    let items = [CallItem {
        event: &event,
        metadata: &meta,
    }];
    let out = rt
        .block_on(pool.call(script, &meta, &items, Some(&destination)))
        .map_err(|e| format!("{}: call failed: {e}", path.display()))?;
    let CallResults::PerEvent(mut results) = out.results else {
        return Err("not per event".into());
    };
    match (results.pop(), fixture.get("error")) {
        (Some(ItemResult::Out(reqs)), None) => {
            let got: Vec<Value> = reqs.into_iter().map(Value::Object).collect();
            let want = match &fixture["output"] {
                Value::Array(a) => a.clone(),
                other => vec![other.clone()],
            };
            if got != want {
                return Err(format!(
                    "{}: got\n{}\nwant\n{}",
                    path.display(),
                    serde_json::to_string_pretty(&got).unwrap_or_default(),
                    serde_json::to_string_pretty(&want).unwrap_or_default()
                ));
            }
        }
        (Some(ItemResult::Failed(e)), Some(want)) => {
            let msg = want["message"].as_str().unwrap_or_default();
            if !e.message.contains(msg) || want["status"].as_u64() != e.status.map(u64::from) {
                return Err(format!("{}: error {e:?}, want {want}", path.display()));
            }
        }
        (got, want) => {
            return Err(format!(
                "{}: got {got:?}, want error {want:?}",
                path.display()
            ));
        }
    }
    Ok(())
}

#[test]
fn destination_script_fixtures_match() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let root = repo_root().join("transformer-scripts");
    let libraries = Arc::new(load_libraries(&root.join("libraries")).expect("libraries"));
    let pool = TransformPool::start(TransformSettings {
        isolates: 1,
        ..TransformSettings::default()
    })
    .expect("pool");
    let mut checked = 0;
    let mut failures = Vec::new();
    for kind in ["ga4", "am", "mp", "slack"] {
        let dir = root.join("destinations").join(kind);
        let script = Arc::new(
            Script::load(
                kind,
                &dir.join("transform.js"),
                ScriptKind::Destination,
                libraries.clone(),
            )
            .expect("script"),
        );
        let mut fixtures: Vec<PathBuf> = std::fs::read_dir(dir.join("fixtures"))
            .expect("fixtures folder")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        fixtures.sort();
        assert!(fixtures.len() >= 3, "{kind} needs fixtures");
        for f in fixtures {
            checked += 1;
            if let Err(e) = check_fixture(&pool, &script, &f, rt.handle()) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked >= 12);
}
