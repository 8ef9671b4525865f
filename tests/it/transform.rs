//! JavaScript transformations end to end: user transformations that enrich, filter, split,
//! use `metadata()`, `log()`, a library, `async` + `fetch`; scripts that throw, loop or
//! exhaust their heap dead-letter only their own events while the rest flows; a reload that
//! swaps a script loses nothing; destination scripts (GA4, Amplitude, Mixpanel, Slack)
//! send the real APIs' request shapes to local servers and match their fixtures; the
//! `keel transform test` CLI, including case files whose `network` answers `fetch`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

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

    // Slack incoming webhook: {"text"} for identify and track; page is skipped (its API has
    // no such event): not dead-lettered, and explain says why.
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
    let (status, doc) = keel.admin_get("/admin/events/p1").await;
    assert_eq!(status, 200, "{doc}");
    let sl = &doc["destinations"]["sl"];
    assert_eq!(sl["status"], "filtered", "{doc}");
    assert!(
        sl["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not supported"),
        "{doc}"
    );
    assert!(dlq(&keel, "sl").await.is_empty());
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
            "transformer-scripts/destinations/SLACK/transform.js",
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

/// Every destination script's case files pass through `keel transform test --all`, the
/// runner users have; a failing case fails the run with its differences printed.
#[test]
fn every_destination_scripts_cases_pass() {
    let out = keel_command()
        .current_dir(repo_root())
        .args(["transform", "test", "--all"])
        .output()
        .expect("keel transform test --all");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("all destinations:"))
        .expect("summary line");
    let passed: usize = summary
        .trim_start_matches("all destinations: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("count");
    let folders = std::fs::read_dir(repo_root().join("transformer-scripts/destinations"))
        .expect("destinations")
        .count();
    assert!(
        passed >= folders * 3,
        "{passed} cases for {folders} destinations"
    );
}

/// A failing case makes the runner exit non-zero and print the differing field.
#[test]
fn a_failing_case_shows_its_difference_and_fails_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let case = json!({
        "description": "wrong endpoint on purpose",
        "config": {"apiKey": "am-key"},
        "event": {"userId": "u1", "type": "track", "event": "E", "messageId": "m1",
                   "timestamp": "2026-11-23T10:15:30.250Z"},
        "output": {"method": "POST", "endpoint": "https://example.com/wrong",
                   "headers": {}, "body": {"JSON": {}}},
    });
    std::fs::write(dir.path().join("wrong.json"), case.to_string()).expect("write");
    let out = keel_command()
        .current_dir(repo_root())
        .args(["transform", "test", "--destination", "AM", "--cases"])
        .arg(dir.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL  AM/wrong.json"), "{stdout}");
    assert!(stdout.contains(".endpoint"), "{stdout}");
    assert!(stdout.contains("AM: 0 passed, 1 failed"), "{stdout}");
}

/// A case with `network` answers the script's `fetch` from that list: a case whose look-up
/// is listed passes; one whose script asks for a URL not listed fails naming it, even when
/// the script catches the error.
#[test]
fn cases_with_network_answer_fetch_and_fail_on_an_unlisted_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script_dir = dir.path().join("destinations/LOOKUP");
    std::fs::create_dir_all(&script_dir).expect("mkdir");
    std::fs::write(
        script_dir.join("transform.js"),
        r#"export async function process(event, destination) {
  const url = `https://lookup.test/users?id=${encodeURIComponent(event.userId)}`;
  let found;
  try {
    found = await fetchV2(url, { headers: { "X-Key": destination.Config.apiKey } });
  } catch (e) {
    if (!event.properties.tolerant) throw e;
    found = { status: 0, body: {} };
  }
  return { method: "POST", endpoint: "https://lookup.test/events", headers: {}, params: {},
           body: { JSON: { contact: found.body.id ?? null, seen: found.status, event: event.event } } };
}"#,
    )
    .expect("script");
    let cases = dir.path().join("cases");
    std::fs::create_dir_all(&cases).expect("mkdir");
    let network = json!([
        {"request": {"method": "GET", "url": "https://lookup.test/users?id=u1",
                     "headers": {"x-key": "k1"}},
         "response": {"status": 200, "body": {"id": 42}}},
        {"request": {"method": "GET", "url": "https://lookup.test/users?id=u9"},
         "response": {"status": 404, "body": "no such user"}},
    ]);
    let case = |user: &str, props: Value, contact: Value, seen: u16| {
        json!({
            "description": format!("look-up of {user}"),
            "config": {"apiKey": "k1"},
            "event": {"userId": user, "type": "track", "event": "E", "properties": props},
            "output": {"method": "POST", "endpoint": "https://lookup.test/events",
                       "headers": {}, "params": {},
                       "body": {"JSON": {"contact": contact, "seen": seen, "event": "E"}}},
            "network": network,
        })
    };
    let write = |name: &str, v: Value| {
        std::fs::write(cases.join(name), v.to_string()).expect("write");
    };
    write("a_listed.json", case("u1", json!({}), json!(42), 200));
    write("b_unlisted.json", case("u2", json!({}), json!(42), 200));
    write(
        "c_unlisted_caught.json",
        case("u3", json!({"tolerant": true}), Value::Null, 0),
    );
    let out = keel_command()
        .current_dir(repo_root())
        .env("KEEL_TRANSFORM__SCRIPTS_DIR", dir.path())
        .args(["transform", "test", "--destination", "LOOKUP", "--cases"])
        .arg(&cases)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("PASS  LOOKUP/a_listed.json"), "{stdout}");
    // The entry for u9 served no request: noted, not a failure.
    assert!(
        stdout.contains("note: network[1] answered no request"),
        "{stdout}"
    );
    assert!(stdout.contains("FAIL  LOOKUP/b_unlisted.json"), "{stdout}");
    assert!(
        stdout.contains("no `network` entry answers GET https://lookup.test/users?id=u2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  LOOKUP/c_unlisted_caught.json"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no `network` entry answers GET https://lookup.test/users?id=u3"),
        "{stdout}"
    );
    assert!(stdout.contains("LOOKUP: 1 passed, 2 failed"), "{stdout}");
}

/// `Intl` has its ICU data: time zones and locales format (without it V8 aborts the whole
/// process on the first `Intl.DateTimeFormat` with a time zone).
#[test]
fn scripts_format_dates_and_numbers_with_intl() {
    let dir = tempfile::tempdir().expect("dir");
    let script = dir.path().join("intl.js");
    std::fs::write(
        &script,
        r#"export function transformEvent(event) {
  const at = new Date(Date.UTC(2026, 11, 6, 12, 0, 0));
  event.properties.kolkata = new Intl.DateTimeFormat("en-US",
    { timeZone: "Asia/Kolkata", timeZoneName: "longOffset", hour: "numeric" }).format(at);
  event.properties.german = new Intl.NumberFormat("de-DE").format(1234.5);
  return event;
}"#,
    )
    .expect("write");
    let ev = write_json(dir.path(), "ev.json", &track("u1", "Buy", "i1", json!({})));
    let out = keel_cli()
        .args(["transform", "test"])
        .arg(&script)
        .arg("--event")
        .arg(&ev)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["properties"]["kolkata"], "5 PM GMT+05:30");
    assert_eq!(v["properties"]["german"], "1.234,5");
}

/// Sends `n` track events named `name` for ten users at `per_sec`, in batches every 50 ms;
/// answers the messageIds.
async fn paced(keel: &Keel, name: &str, run: &str, n: usize, per_sec: usize) -> Vec<String> {
    let per_tick = (per_sec / 20).max(1);
    let mut ids = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while ids.len() < n {
        tick.tick().await;
        let batch: Vec<Value> = (0..per_tick.min(n - ids.len()))
            .map(|_| {
                let id = format!("{name}-{run}-{}", ids.len());
                let user = format!("u{}", ids.len() % 10);
                ids.push(id.clone());
                track(&user, name, &id, json!({}))
            })
            .collect();
        send_batches(keel, &batch, batch.len()).await;
    }
    ids
}

/// Delivered events per second of one paced run of `Steady` events: from the first send
/// to the last delivery.
async fn steady_rate(keel: &Keel, sink: &Sink, run: &str, n: usize, per_sec: usize) -> f64 {
    let before = sink.delivered().len();
    let started = Instant::now();
    paced(keel, "Steady", run, n, per_sec).await;
    let got = sink
        .wait_delivered(before + n, Duration::from_secs(60))
        .await;
    assert_eq!(got, before + n, "every steady event is delivered");
    n as f64 / started.elapsed().as_secs_f64()
}

/// A destination whose script loops forever holds at most its share of the isolates, and
/// the processor stops waiting for it after the mapping deadline: another script
/// destination keeps ≥ 90 % of its delivery rate.
#[tokio::test]
async fn a_runaway_script_leaves_other_script_destinations_their_rate() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let scripts = tempfile::tempdir().expect("dir");
    for (name, body) in [
        (
            "Runaway",
            "export function process(event, destination) { for (;;) {} }",
        ),
        (
            "Steady",
            r#"export function process(event, destination) {
  return { method: "POST", endpoint: destination.Config.url, body: { JSON: { messageId: event.messageId } } };
}"#,
        ),
    ] {
        let folder = scripts.path().join("destinations").join(name);
        std::fs::create_dir_all(&folder).expect("mkdir");
        std::fs::write(folder.join("transform.js"), body).expect("script");
    }
    let only = |event: &str| json!({"eventFilteringOption": "whitelistedEvents", "whitelistedEvents": [{"eventName": event}]});
    let mut runaway_config = only("Loop");
    runaway_config["url"] = json!(sink.url);
    let mut steady_config = only("Steady");
    steady_config["url"] = json!(sink.url);
    let mut opts = fast_router(KeelOptions::new(&db))
        .env("KEEL_ALLOW_PRIVATE_TARGETS", "true")
        .env("KEEL_TRANSFORM__CALL_TIMEOUT_MS", "3000")
        .env("KEEL_TRANSFORM__MAPPING_DEADLINE_MS", "300")
        .env(
            "KEEL_TRANSFORM__SCRIPTS_DIR",
            &scripts.path().display().to_string(),
        );
    opts.workspace = workspace_of(vec![
        script_dest("ra", "Runaway", runaway_config),
        script_dest("st", "Steady", steady_config),
    ]);
    let keel = Keel::start(opts).await;

    let alone = steady_rate(&keel, &sink, "alone", 300, 150).await;
    // The runaway destination gets traffic of its own for the rest of the test.
    let loops = {
        let batch_url = keel.url("/v1/batch");
        tokio::spawn(async move {
            let client = http();
            for i in 0..200 {
                let ev = track(
                    &format!("l{}", i % 5),
                    "Loop",
                    &format!("loop-{i}"),
                    json!({}),
                );
                let _ = client
                    .post(&batch_url)
                    .header("Authorization", basic(WRITE_KEY))
                    .json(&json!({"batch": [ev]}))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let beside_runaway = steady_rate(&keel, &sink, "beside", 300, 150).await;
    loops.abort();
    assert!(
        beside_runaway >= 0.9 * alone,
        "steady deliveries: {alone:.0}/s alone, {beside_runaway:.0}/s beside a runaway script"
    );
    // The runaway script's events are not delivered (they time out and are dead-lettered).
    assert!(sink.delivered().iter().all(|b| !b["messageId"]
        .as_str()
        .unwrap_or_default()
        .starts_with("loop-")));
}
