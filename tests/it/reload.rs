//! Configuration reload and graceful shutdown: `POST /admin/reload` and SIGHUP apply a new
//! workspace without a restart — added, changed and removed destinations take effect while
//! events keep flowing, with nothing lost or reordered; an invalid workspace is refused with
//! every problem and the running one stays; SIGTERM drains the routers (or abandons what
//! hangs at the deadline) and exits 0, and everything acked is delivered after a restart.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::sink::{Sink, SinkMode};
use crate::common::*;

fn hook(id: &str, url: &str, version: &str) -> Value {
    json!({"id": id, "name": format!("Hook {id}"), "enabled": true,
           "config": {"webhookUrl": url, "headers": [{"from": "X-Version", "to": version}]},
           "destinationDefinition": {"name": "WEBHOOK"}})
}

fn ws(dests: Vec<Value>) -> Value {
    json!({"sources": [{"id": SOURCE_ID, "name": "Test", "writeKey": WRITE_KEY, "enabled": true,
                        "destinations": dests}]})
}

/// Sends batches of 10 events (users u0..u3, increasing `seq`) every 20 ms until `stop`;
/// returns the messageIds in send order, each with the moment its request was answered.
fn spawn_load(
    keel: &Keel,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, Instant)>> {
    let url = keel.url("/v1/batch");
    tokio::spawn(async move {
        let client = http();
        let mut sent = Vec::new();
        let mut seq = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let batch: Vec<Value> = (seq..seq + 10)
                .map(|i| {
                    json!({"type": "track", "userId": format!("u{}", i % 4), "event": "Step",
                                "messageId": format!("m{i}"), "properties": {"seq": i}})
                })
                .collect();
            post_batch(&client, &url, &batch).await;
            let at = Instant::now();
            for i in seq..seq + 10 {
                sent.push((format!("m{i}"), at));
            }
            seq += 10;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    })
}

/// Per user, the first deliveries of each message must follow `seq` order.
fn assert_per_user_order(delivered: &[Value]) {
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut seen = HashSet::new();
    for b in delivered {
        if !seen.insert(b["messageId"].as_str().unwrap_or("").to_owned()) {
            continue;
        }
        let user = b["userId"].as_str().expect("userId").to_owned();
        let seq = b["properties"]["seq"].as_i64().expect("seq");
        if let Some(prev) = last.insert(user.clone(), seq) {
            assert!(seq > prev, "{user}: {seq} delivered after {prev}");
        }
    }
}

fn unique_ids(sink: &Sink) -> HashSet<String> {
    sink.delivered()
        .iter()
        .filter_map(|b| b["messageId"].as_str().map(str::to_owned))
        .collect()
}

async fn wait_unique(sink: &Sink, ids: &HashSet<String>, timeout: Duration) -> HashSet<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = unique_ids(sink);
        if ids.is_subset(&got) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn admin_reload_applies_destination_changes_under_load_without_loss_or_reordering() {
    let db = TestDb::create().await;
    let a = Sink::start(SinkMode::Ok).await;
    let b = Sink::start(SinkMode::Ok).await;
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = ws(vec![hook("a", &a.url, "1")]);
    let keel = Keel::start(opts).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&keel, stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;

    // 1. Change A (a header) and add B, under load.
    keel.write_workspace(&ws(vec![hook("a", &a.url, "2"), hook("b", &b.url, "1")]));
    let (status, body) = keel.admin_reload().await;
    let reloaded_at = Instant::now();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changes"]["started"], json!(["a", "b"]), "{body}");
    assert_eq!(body["changes"]["stopped"], json!(["a"]), "{body}");
    tokio::time::sleep(Duration::from_millis(800)).await;

    // 2. An invalid workspace is refused with its problems; the running one stays.
    keel.write_workspace(&json!({"sources": [{"id": SOURCE_ID, "writeKey": WRITE_KEY, "enabled": true,
        "destinations": [{"id": "a", "name": "A", "enabled": true, "config": {"webhookUrl": "not a url"},
                          "destinationDefinition": {"name": "WEBHOOK"}}]}]}));
    let (status, body) = keel.admin_reload().await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_workspace");
    let problems = body["problems"].to_string();
    assert!(
        problems.contains("$.sources[0].name: missing"),
        "{problems}"
    );
    assert!(
        problems.contains("workspace.json"),
        "names the file: {problems}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 3. Remove B.
    keel.write_workspace(&ws(vec![hook("a", &a.url, "2")]));
    let (status, body) = keel.admin_reload().await;
    let removed_at = Instant::now();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changes"]["stopped"], json!(["b"]), "{body}");
    assert_eq!(body["changes"]["unchanged"], json!(["a"]), "{body}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.expect("load");

    // A: every event, in per-user order, across both reloads.
    let all: HashSet<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    let got = wait_unique(&a, &all, Duration::from_secs(30)).await;
    assert_eq!(got.len(), all.len(), "A got {} of {}", got.len(), all.len());
    assert!(all.is_subset(&got));
    assert_per_user_order(&a.delivered());
    // The changed header reached A's later deliveries.
    let v2 = a
        .received()
        .iter()
        .filter(|r| r.headers.get("x-version").map(String::as_str) == Some("2"))
        .count();
    assert!(v2 > 0, "no delivery used the reloaded settings");
    // B: everything acked after it was added and before it was removed.
    let for_b: HashSet<String> = sent
        .iter()
        .filter(|(_, at)| *at > reloaded_at && *at < removed_at - Duration::from_millis(300))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!for_b.is_empty());
    let got_b = wait_unique(&b, &for_b, Duration::from_secs(20)).await;
    assert!(
        for_b.is_subset(&got_b),
        "B missed {} events",
        for_b.difference(&got_b).count()
    );
    assert_per_user_order(&b.delivered());
    // Nothing acked well after B's removal reached it.
    let late: Vec<&String> = sent
        .iter()
        .filter(|(_, at)| *at > removed_at + Duration::from_millis(300))
        .map(|(id, _)| id)
        .filter(|id| got_b.contains(*id))
        .collect();
    assert!(late.is_empty(), "B still got {late:?}");
}

#[tokio::test]
async fn sighup_reloads_sources_and_keeps_the_old_config_when_invalid() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    let send = |key: &'static str| {
        let url = keel.url("/v1/track");
        async move {
            http()
                .post(url)
                .header("Authorization", basic(key))
                .json(&json!({"userId": "u", "event": "E"}))
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        }
    };
    assert_eq!(send("new-key").await, 401);
    let mut next = workspace();
    next["sources"]
        .as_array_mut()
        .expect("sources")
        .push(json!({"id": "src_new", "name": "New", "writeKey": "new-key", "enabled": true}));
    keel.write_workspace(&next);
    keel.sighup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while send("new-key").await != 200 {
        assert!(
            Instant::now() < deadline,
            "new source never accepted:\n{}",
            keel.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(send(WRITE_KEY).await, 200);

    std::fs::write(&keel.ws_path, b"{ not json").expect("write");
    keel.sighup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !keel.log_text().contains("reload rejected") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            keel.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        keel.log_text().contains("invalid JSON"),
        "{}",
        keel.log_text()
    );
    assert_eq!(send("new-key").await, 200, "the last good config stays");
}

#[tokio::test]
async fn sigterm_drains_deliveries_exits_zero_and_loses_nothing() {
    let db = TestDb::create().await;
    // A destination that never answers: its deliveries are abandoned at the drain deadline.
    let hang = Sink::start(SinkMode::Hang).await;
    let ok = Sink::start(SinkMode::Ok).await;
    let mut opts = fast_router(KeelOptions::new(&db))
        .env("KEEL_SERVER__DRAIN_TIMEOUT_SECS", "2")
        .env("KEEL_ROUTER__TIMEOUT_SECS", "30");
    opts.workspace = ws(vec![hook("ok", &ok.url, "1"), hook("hang", &hang.url, "1")]);
    let mut keel = Keel::start(opts).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&keel, stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.expect("load");
    let started = Instant::now();
    let code = tokio::task::spawn_blocking(move || {
        let code = keel.terminate();
        (code, keel)
    })
    .await
    .expect("join");
    let (code, keel) = code;
    let took = started.elapsed();
    assert_eq!(code, Some(0), "exit status; log:\n{}", keel.log_text());
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    let log = keel.log_text();
    assert!(log.contains("draining routers"), "{log}");
    assert!(
        log.contains("abandoned"),
        "the hanging deliveries were abandoned:\n{log}"
    );
    drop(keel);

    // After a restart every acked event reaches both destinations, in order.
    hang.set_mode(SinkMode::Ok);
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = ws(vec![hook("ok", &ok.url, "1"), hook("hang", &hang.url, "1")]);
    let _keel = Keel::start(opts).await;
    let all: HashSet<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    for sink in [&ok, &hang] {
        let got = wait_unique(sink, &all, Duration::from_secs(30)).await;
        assert!(
            all.is_subset(&got),
            "missing {}",
            all.difference(&got).count()
        );
        assert_per_user_order(&sink.delivered());
    }
    assert!(!all.is_empty());
}
