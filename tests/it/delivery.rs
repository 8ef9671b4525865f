//! Processor and routers end to end, against real local HTTP sinks: exactly-once delivery in
//! steady state, per-user order under failures, isolation between destinations, DLQ and
//! replay, the explain endpoint, throttling, and recovery after kill -9.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use keel_actors::store::dedup_key;
use serde_json::{json, Value};

use crate::common::sink::{Sink, SinkMode};
use crate::common::*;

fn track(user: &str, i: usize, id: &str) -> Value {
    json!({"type": "track", "userId": user, "event": "Step", "messageId": id, "properties": {"i": i}})
}

/// Asserts that, per user, the first deliveries of each message are in send order.
fn assert_ordered(delivered: &[Value], sent: &HashMap<String, Vec<String>>) {
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut first = HashSet::new();
    for b in delivered {
        let id = b["messageId"].as_str().expect("messageId").to_owned();
        if first.insert(id.clone()) {
            seen.entry(b["userId"].as_str().expect("userId").to_owned())
                .or_default()
                .push(id);
        }
    }
    for (user, ids) in sent {
        assert_eq!(seen.get(user), Some(ids), "order for {user}");
    }
}

#[tokio::test]
async fn rows_stored_before_ingest_dedup_are_checked_against_the_dedup_table() {
    use keel_actors::partition::partition_of;
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = workspace_with_webhooks(&[("hook", &sink.url, json!({}))]);
    let keel = Keel::start(opts).await;
    let c = db.client().await;
    // As a gateway before migration 000006 stored them: `duplicates` NULL. "old-dup" is
    // owned by another (long consumed) job, "old-new" by this one.
    c.execute(
        "INSERT INTO dedup (key, job_id, seen_at) VALUES ($1::text::uuid, -5, now())",
        &[&dedup_key(SOURCE_ID, "old-dup").to_string()],
    )
    .await
    .expect("dedup row");
    let events = json!([
        {"type": "track", "userId": "legacy", "event": "E", "messageId": "old-dup"},
        {"type": "track", "userId": "legacy", "event": "E", "messageId": "old-new"},
    ]);
    c.execute(
        "WITH g AS (INSERT INTO gw_jobs (source_id, received_at, event_count, payload, partition) \
                    VALUES ($1, now(), 2, $2, $3) RETURNING id) \
         INSERT INTO dedup (key, job_id, seen_at) SELECT $4::text::uuid, id, now() FROM g",
        &[
            &SOURCE_ID,
            &events.to_string(),
            &partition_of("legacy", 16),
            &dedup_key(SOURCE_ID, "old-new").to_string(),
        ],
    )
    .await
    .expect("legacy row");
    assert_eq!(sink.wait_delivered(1, Duration::from_secs(20)).await, 1);
    // A later request with the same messageId as a delivered one is dropped as well.
    send_batches(&keel, &[track("legacy", 3, "old-new")], 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got: Vec<String> = sink
        .received()
        .iter()
        .map(|r| r.body["messageId"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(
        got,
        vec!["old-new".to_owned()],
        "the owned repeat is dropped"
    );
}

#[tokio::test]
async fn delivers_every_event_once_with_body_headers_and_filters() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let filtered = Sink::start(SinkMode::Ok).await;
    let ws = workspace_with_webhooks(&[
        ("hook", &sink.url, json!({})),
        (
            "only_buy",
            &filtered.url,
            json!({"eventFilteringOption": "whitelistedEvents", "whitelistedEvents": [{"eventName": "Buy"}]}),
        ),
    ]);
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = ws;
    let keel = Keel::start(opts).await;
    let events: Vec<Value> = (0..300)
        .map(|i| track(&format!("u{}", i % 7), i, &format!("m{i}")))
        .collect();
    send_batches(&keel, &events, 50).await;
    send_batches(&keel, &[
        json!({"type": "track", "userId": "b", "event": "Buy", "messageId": "buy-1"}),
        json!({"type": "identify", "userId": "b", "messageId": "excluded", "integrations": {"Hook hook": false, "Hook only_buy": false}}),
        json!({"type": "track", "userId": "u0", "event": "Step", "messageId": "m0"}),
    ], 3).await;
    assert_eq!(sink.wait_delivered(301, Duration::from_secs(30)).await, 301);
    assert_eq!(filtered.wait_delivered(1, Duration::from_secs(10)).await, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sink.received();
    assert_eq!(
        got.len(),
        301,
        "exactly once: no duplicates, duplicate messageId dropped, excluded event not sent"
    );
    let ids: HashSet<_> = got
        .iter()
        .map(|r| r.body["messageId"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 301);
    let r = got
        .iter()
        .find(|r| r.body["messageId"] == "m5")
        .expect("m5");
    assert_eq!(r.body["properties"]["i"], 5);
    assert_eq!(r.body["event"], "Step");
    assert!(r.body["receivedAt"].is_string() && r.body["timestamp"].is_string());
    assert_eq!(r.headers.get("x-test").map(String::as_str), Some("hook"));
    assert!(r
        .headers
        .get("content-type")
        .is_some_and(|c| c.contains("application/json")));
    assert_eq!(filtered.received().len(), 1);
    assert_eq!(filtered.received()[0].body["messageId"], "buy-1");
    // Storage stays flat: consumed requests and delivered jobs are gone.
    let c = db.client().await;
    let left: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM gw_jobs) + (SELECT count(*) FROM rt_jobs)",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0);
    // Explain: delivered to one destination, filtered from the other.
    let (status, doc) = keel.admin_get("/admin/events/m5").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["stage"], "processed");
    assert_eq!(doc["destinations"]["hook"]["status"], "delivered");
    assert_eq!(doc["destinations"]["only_buy"]["status"], "filtered");
    let (status, doc) = keel.admin_get("/admin/events/excluded").await;
    assert_eq!(status, 200);
    assert_eq!(doc["destinations"]["hook"]["status"], "filtered", "{doc}");
    assert_eq!(
        doc["destinations"]["only_buy"]["status"], "filtered",
        "{doc}"
    );
    let (status, doc) = keel.admin_get("/admin/events/buy-1").await;
    assert_eq!(status, 200);
    assert_eq!(doc["destinations"]["hook"]["status"], "delivered", "{doc}");
    assert_eq!(
        doc["destinations"]["only_buy"]["status"], "delivered",
        "{doc}"
    );
    // The request of m5 was routed alike throughout: one decision, no messageIds. "buy-1"
    // and "excluded" (one user, so one stored row) were not: a decision per event.
    let ids: Vec<Option<Vec<String>>> = c
        .query(
            "SELECT r.message_ids FROM routing_jobs r JOIN dedup d ON d.job_id = r.job_id \
             WHERE d.key = ANY($1::text[]::uuid[]) ORDER BY r.job_id",
            &[&["m5", "excluded"]
                .map(|m| dedup_key(SOURCE_ID, m).to_string())
                .to_vec()],
        )
        .await
        .expect("routing rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ids,
        vec![None, Some(vec!["buy-1".to_owned(), "excluded".to_owned()])]
    );
    assert_eq!(keel.admin_get("/admin/events/nope").await.0, 404);
    let res = http()
        .get(keel.url("/admin/dlq"))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("admin");
    assert_eq!(res.status().as_u16(), 401);
}

#[tokio::test]
async fn keeps_per_user_order_when_the_sink_fails_30_percent() {
    let db = TestDb::create().await;
    // Few 429s: each one's `Retry-After` pauses the whole destination (the hint covers the
    // API key, not one user), so ~15 of them already cost ~15 s.
    let sink = Sink::start(SinkMode::Flaky {
        p500: 0.299,
        p429: 0.001,
        retry_after: 1,
    })
    .await;
    let mut opts = fast_router(KeelOptions::new(&db)).env("KEEL_ROUTER__MAX_ATTEMPTS", "1000");
    opts.workspace = workspace_with_webhooks(&[("hook", &sink.url, json!({}))]);
    let keel = Keel::start(opts).await;
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    let mut events = Vec::new();
    // 50 users × 200 events, interleaved.
    for i in 0..200 {
        for u in 0..50 {
            let (user, id) = (format!("user{u}"), format!("u{u}-e{i}"));
            sent.entry(user.clone()).or_default().push(id.clone());
            events.push(track(&user, i, &id));
        }
    }
    send_batches(&keel, &events, 100).await;
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let delivered: HashSet<String> = sink
            .delivered()
            .iter()
            .filter_map(|b| b["messageId"].as_str().map(str::to_owned))
            .collect();
        if delivered.len() >= 10_000 || Instant::now() > deadline {
            assert_eq!(delivered.len(), 10_000, "none lost");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let received = sink.received();
    let failures = received.iter().filter(|r| r.status >= 400).count();
    assert!(failures > 2000, "the sink really failed ({failures})");
    assert_ordered(&sink.delivered(), &sent);
    // Retry-After is honoured: a message answered 429 is not retried within the next second.
    let mut last_429: HashMap<String, Instant> = HashMap::new();
    for r in &received {
        let id = r.body["messageId"].as_str().expect("id").to_owned();
        if let Some(t) = last_429.get(&id) {
            assert!(
                r.at.duration_since(*t) >= Duration::from_millis(900),
                "{id} retried {:?} after a 429",
                r.at.duration_since(*t)
            );
        }
        if r.status == 429 {
            last_429.insert(id, r.at);
        } else {
            last_429.remove(&id);
        }
    }
}

#[tokio::test]
async fn dead_letters_4xx_at_once_and_replays_in_order() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::RejectUser("bad".into())).await;
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = workspace_with_webhooks(&[("hook", &sink.url, json!({}))]);
    let keel = Keel::start(opts).await;
    let events: Vec<Value> = (0..20)
        .map(|i| track(if i % 2 == 0 { "bad" } else { "good" }, i, &format!("m{i}")))
        .collect();
    send_batches(&keel, &events, 20).await;
    assert_eq!(sink.wait_delivered(10, Duration::from_secs(20)).await, 10);
    let listed = keel.wait_dlq("hook", 10, Duration::from_secs(20)).await;
    assert_eq!(listed["count"], 10, "{listed}");
    let job = &listed["jobs"][0];
    assert_eq!(job["attempts"], 1, "4xx is not retried");
    assert_eq!(job["last_status"], 400);
    assert!(job["reason"].as_str().expect("reason").contains("400"));
    assert!(job["last_response"]
        .as_str()
        .expect("body")
        .contains("sink says no"));
    let bad_tries = sink
        .received()
        .iter()
        .filter(|r| r.body["userId"] == "bad")
        .count();
    assert_eq!(bad_tries, 10, "one attempt each");
    let (status, doc) = keel.admin_get("/admin/events/m0").await;
    assert_eq!(status, 200);
    assert_eq!(
        doc["destinations"]["hook"]["status"], "dead_lettered",
        "{doc}"
    );

    let (status, body) = keel.admin_post("/admin/dlq/replay", &json!({})).await;
    assert_eq!(status, 400, "a replay must say what to replay: {body}");
    sink.set_mode(SinkMode::Ok);
    let (status, body) = keel
        .admin_post("/admin/dlq/replay", &json!({"destination": "hook"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 10);
    assert_eq!(sink.wait_delivered(20, Duration::from_secs(20)).await, 20);
    let replayed: Vec<String> = sink
        .delivered()
        .iter()
        .filter(|b| b["userId"] == "bad")
        .map(|b| b["messageId"].as_str().expect("id").to_owned())
        .collect();
    let expected: Vec<String> = (0..20).step_by(2).map(|i| format!("m{i}")).collect();
    assert_eq!(replayed, expected, "replayed in order");
    assert_eq!(keel.admin_get("/admin/dlq").await.1["count"], 0);
}

/// A destination's answer is kept in text columns (retry state, dead letters), which cannot
/// hold a NUL character: an answer carrying one must still be retried and dead-lettered,
/// not stall the router on a status write that Postgres refuses.
#[tokio::test]
async fn answers_with_nul_characters_are_retried_and_dead_lettered() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let db = TestDb::create().await;
    let tries = Arc::new(AtomicUsize::new(0));
    let t = tries.clone();
    let sink = Sink::start(SinkMode::Answer(crate::common::sink::Responder::new(
        move |_, body| match body["userId"].as_str() {
            Some("flaky") if t.fetch_add(1, Ordering::SeqCst) < 2 => {
                (500, String::new(), "bad\u{0}gateway".into())
            }
            Some("refused") => (400, String::new(), "{\"error\":\"no\u{0}pe\"}".into()),
            _ => (200, String::new(), "{}".into()),
        },
    )))
    .await;
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = workspace_with_webhooks(&[("hook", &sink.url, json!({}))]);
    let keel = Keel::start(opts).await;
    let events = vec![
        track("flaky", 0, "n0"),
        track("refused", 1, "n1"),
        track("fine", 2, "n2"),
    ];
    send_batches(&keel, &events, 3).await;
    assert_eq!(sink.wait_delivered(2, Duration::from_secs(20)).await, 2);
    let listed = keel.wait_dlq("hook", 1, Duration::from_secs(20)).await;
    assert_eq!(listed["count"], 1, "{listed}");
    let job = &listed["jobs"][0];
    assert_eq!(job["message_id"], "n1");
    let response = job["last_response"].as_str().expect("body");
    assert!(response.contains("no") && response.contains("pe"), "{job}");
    assert!(tries.load(Ordering::SeqCst) >= 3, "the 500s were retried");
    let delivered: HashSet<String> = sink
        .delivered()
        .iter()
        .map(|b| b["messageId"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(delivered, HashSet::from(["n0".to_owned(), "n2".to_owned()]));
    assert!(
        !keel.log_text().contains("router status write failed"),
        "status writes must not fail"
    );
}

#[tokio::test]
async fn throttles_to_the_configured_rate() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = workspace_with_webhooks(&[(
        "hook",
        &sink.url,
        json!({"throttling": {"limit": 100, "timeWindow": 1}}),
    )]);
    let keel = Keel::start(opts).await;
    let events: Vec<Value> = (0..350)
        .map(|i| track(&format!("u{}", i % 20), i, &format!("m{i}")))
        .collect();
    send_batches(&keel, &events, 100).await;
    assert_eq!(sink.wait_delivered(350, Duration::from_secs(20)).await, 350);
    let times: Vec<Instant> = sink.received().iter().map(|r| r.at).collect();
    let start = times[0];
    let span = times.last().expect("last").duration_since(start);
    assert!(
        span >= Duration::from_millis(2500),
        "350 events at 100/s take > 2.5 s, took {span:?}"
    );
    // Sliding one-second windows: at most the limit plus the burst (a tenth).
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(in_window <= 110, "{in_window} deliveries within one second");
    }
}

#[tokio::test]
async fn a_hanging_destination_does_not_slow_the_others() {
    let db = TestDb::create().await;
    let a = Sink::start(SinkMode::Ok).await;
    let b = Sink::start(SinkMode::Ok).await;
    let mut opts = fast_router(KeelOptions::new(&db))
        .env("KEEL_ROUTER__TIMEOUT_SECS", "1")
        .env("KEEL_ROUTER__BREAKER_THRESHOLD", "5")
        .env("KEEL_ROUTER__BREAKER_PROBE_INTERVAL_MS", "300")
        .env("KEEL_ROUTER__MAX_ATTEMPTS", "1000");
    opts.workspace = workspace_with_webhooks(&[("a", &a.url, json!({})), ("b", &b.url, json!({}))]);
    let keel = Keel::start(opts).await;
    let n = 3000;
    let batch = |round: usize| -> Vec<Value> {
        (0..n)
            .map(|i| track(&format!("u{}", i % 100), i, &format!("r{round}-{i}")))
            .collect()
    };
    // Baseline: both healthy.
    let t0 = Instant::now();
    send_batches(&keel, &batch(0), 100).await;
    assert_eq!(b.wait_delivered(n, Duration::from_secs(60)).await, n);
    let solo = t0.elapsed();
    assert_eq!(a.wait_delivered(n, Duration::from_secs(60)).await, n);
    // A hangs; B must keep its pace.
    a.set_mode(SinkMode::Hang);
    let t1 = Instant::now();
    send_batches(&keel, &batch(1), 100).await;
    assert_eq!(
        b.wait_delivered(2 * n, Duration::from_secs(60)).await,
        2 * n
    );
    let with_a_down = t1.elapsed();
    let ratio = solo.as_secs_f64() / with_a_down.as_secs_f64();
    assert!(
        ratio >= 0.9,
        "B's throughput with A hanging is {:.0}% of baseline ({solo:?} vs {with_a_down:?})",
        ratio * 100.0
    );
    // A's deliveries time out after 1 s; five consecutive failures open its breaker.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = keel.metrics().await;
        if metrics.contains("keel_router_circuit_open{destination=\"a\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "breaker never opened for a:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A recovers.
    a.set_mode(SinkMode::Ok);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids: HashSet<String> = a
            .delivered()
            .iter()
            .filter_map(|v| v["messageId"].as_str().map(str::to_owned))
            .collect();
        if ids.len() >= 2 * n || Instant::now() > deadline {
            assert_eq!(ids.len(), 2 * n, "A got everything after recovering");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn kill_9_mid_flow_loses_nothing_and_keeps_order() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = workspace_with_webhooks(&[("hook", &sink.url, json!({}))]);
    let mut keel = Keel::start(opts).await;
    let users = 100;
    let total = 20_000;
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    let events: Vec<Value> = (0..total)
        .map(|i| {
            let (user, id) = (format!("user{}", i % users), format!("e{i}"));
            sent.entry(user.clone()).or_default().push(id.clone());
            track(&user, i, &id)
        })
        .collect();
    send_batches(&keel, &events, 200).await;
    // Kill while events are in every stage: some delivered, some in rt_jobs, some in gw_jobs.
    let got = sink.wait_delivered(3000, Duration::from_secs(30)).await;
    assert!(got >= 3000);
    keel.kill();
    let c = db.client().await;
    let (gw, rt): (i64, i64) = {
        let r = c.query_one("SELECT (SELECT coalesce(sum(event_count),0) FROM gw_jobs)::int8, (SELECT count(*) FROM rt_jobs)", &[]).await.expect("counts");
        (r.get(0), r.get(1))
    };
    let delivered_before = sink.delivered().len();
    assert!(delivered_before < total, "killed before the end");
    eprintln!("at kill: delivered {delivered_before}, rt_jobs {rt}, gw events {gw}");
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = workspace_with_webhooks(&[("hook", &sink.url, json!({}))]);
    let _keel = Keel::start(opts).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ids: HashSet<String> = sink
            .delivered()
            .iter()
            .filter_map(|v| v["messageId"].as_str().map(str::to_owned))
            .collect();
        if ids.len() >= total || Instant::now() > deadline {
            assert_eq!(ids.len(), total, "every acked event delivered");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = sink.delivered();
    let dups = delivered.len() - total;
    assert!(dups * 100 <= total, "{dups} duplicates (> 1%)");
    eprintln!("duplicates after kill -9: {dups} of {total}");
    assert_ordered(&delivered, &sent);
}

#[tokio::test]
async fn routers_restart_after_a_database_outage_and_resume() {
    use crate::common::proxy::{Mode, Proxy};
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut opts = fast_router(KeelOptions::new(&db)).env("KEEL_DATABASE__TIMEOUT_SECS", "1");
    opts.workspace = workspace_with_webhooks(&[("hook", &sink.url, json!({}))]);
    opts.database_url = Some(db.url_via(&proxy.addr));
    let keel = Keel::start(opts).await;
    let events: Vec<Value> = (0..100).map(|i| track("u", i, &format!("a{i}"))).collect();
    send_batches(&keel, &events, 50).await;
    assert_eq!(sink.wait_delivered(100, Duration::from_secs(20)).await, 100);

    proxy.set(Mode::Refuse);
    let restarts = |text: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("keel_supervisor_restarts_total{actor=\"router\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = keel.metrics().await;
        if restarts(&text) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "router never restarted:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.set(Mode::Pass);
    let more: Vec<Value> = (100..200)
        .map(|i| track("u", i, &format!("a{i}")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Ingest answers 503 until the pool reconnects; then the restarted router resumes.
    let client = http();
    for chunk in more.chunks(50) {
        loop {
            let res = client
                .post(keel.url("/v1/batch"))
                .header("Authorization", basic(WRITE_KEY))
                .json(&json!({"batch": chunk}))
                .send()
                .await
                .expect("send");
            if res.status().as_u16() == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "ingest did not recover");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // At least once: outcomes not recorded while the database was away are redelivered,
    // so count distinct messages.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unique: HashSet<String> = sink
            .delivered()
            .iter()
            .filter_map(|b| b["messageId"].as_str().map(str::to_owned))
            .collect();
        if unique.len() >= 200 || Instant::now() > deadline {
            assert_eq!(unique.len(), 200, "every event delivered after the outage");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Explain finds pending jobs without a messageId index on `rt_jobs`: through the id range
/// its request's routing row recorded (retrying, waiting behind their key, and throttled
/// jobs, two events of one request), through the row a dead-letter replay writes, and below
/// the oldest retained routing row for jobs whose routing and dedup rows were pruned or
/// that were stored before migration 000007.
#[tokio::test]
async fn explain_finds_pending_retrying_replayed_and_old_jobs() {
    let db = TestDb::create().await;
    let failing = Sink::start(SinkMode::Status(503)).await;
    let picky = Sink::start(SinkMode::RejectUser("bad".into())).await;
    let slow = Sink::start(SinkMode::Ok).await;
    let mut opts = fast_router(KeelOptions::new(&db)).env("KEEL_ROUTER__MAX_ATTEMPTS", "100000");
    opts.workspace = workspace_with_webhooks(&[
        ("failing", &failing.url, json!({})),
        ("picky", &picky.url, json!({})),
        // One delivery per minute: the other events wait, never attempted.
        (
            "slow",
            &slow.url,
            json!({"throttling": {"limit": 1, "timeWindow": 60}}),
        ),
    ]);
    let keel = Keel::start(opts).await;
    send_batches(
        &keel,
        &[
            track("bad", 0, "e-bad"),
            track("good", 1, "e-good"),
            track("good", 2, "e-good2"),
        ],
        3,
    )
    .await;
    assert_eq!(picky.wait_delivered(2, Duration::from_secs(20)).await, 2);
    assert_eq!(slow.wait_delivered(1, Duration::from_secs(20)).await, 1);
    let explain = |id: &'static str| {
        let keel = &keel;
        async move { keel.admin_get(&format!("/admin/events/{id}")).await.1 }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (bad, good) = loop {
        let bad = explain("e-bad").await;
        let good = explain("e-good").await;
        let retried = |d: &Value| d["destinations"]["failing"]["attempts"].as_i64() >= Some(1);
        if (retried(&bad)
            && retried(&good)
            && bad["destinations"]["picky"]["status"] == "dead_lettered")
            || Instant::now() > deadline
        {
            break (bad, good);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let good2 = explain("e-good2").await;
    for doc in [&bad, &good] {
        let failing = &doc["destinations"]["failing"];
        assert_eq!(failing["status"], "pending", "{doc}");
        assert!(
            failing["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("503")),
            "{doc}"
        );
    }
    // e-good2 waits behind e-good (same user) and was never tried.
    assert_eq!(
        good2["destinations"]["failing"]["status"], "pending",
        "{good2}"
    );
    assert_eq!(good2["destinations"]["failing"]["attempts"], 0, "{good2}");
    assert_eq!(
        bad["destinations"]["picky"]["status"], "dead_lettered",
        "{bad}"
    );
    assert_eq!(
        good["destinations"]["picky"]["status"], "delivered",
        "{good}"
    );
    assert_eq!(
        good2["destinations"]["picky"]["status"], "delivered",
        "{good2}"
    );
    let slow_delivered = slow.received()[0].body["messageId"].clone();
    for doc in [&bad, &good, &good2] {
        let status = &doc["destinations"]["slow"];
        if doc["messageId"] == slow_delivered {
            assert_eq!(status["status"], "delivered", "{doc}");
        } else {
            assert_eq!(status["status"], "pending", "{doc}");
            assert_eq!(status["attempts"], 0, "{doc}");
        }
    }
    // Both events of user "good" are one stored request, routed alike: one routing row with
    // one decision (no messageIds), whose id range holds their jobs.
    let c = db.client().await;
    let good2 = dedup_key(SOURCE_ID, "e-good2").to_string();
    let row = c
        .query_one(
            "SELECT r.message_ids, r.routed, \
                    (SELECT count(*) FROM rt_jobs j, unnest(j.message_ids) AS m(id) \
                     WHERE j.id BETWEEN r.rt_first AND r.rt_last AND m.id IN ('e-good', 'e-good2')) \
             FROM routing_jobs r JOIN dedup d ON d.job_id = r.job_id WHERE d.key = $1::text::uuid",
            &[&good2],
        )
        .await
        .expect("routing row");
    assert_eq!(row.get::<_, Option<Vec<String>>>(0), None);
    let routed: Value = row.get(1);
    assert!(routed.as_array().is_some_and(|a| a.len() == 3), "{routed}");
    assert!(
        row.get::<_, i64>(2) >= 3,
        "failing x2 and one slow job in the range"
    );

    // A replayed dead letter is a new job: explain finds it through the replay's record.
    picky.set_mode(SinkMode::Status(503));
    let (status, body) = keel
        .admin_post("/admin/dlq/replay", &json!({"destination": "picky"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let doc = explain("e-bad").await;
    assert_eq!(doc["destinations"]["picky"]["status"], "pending", "{doc}");

    // A job as Keel stored it before migration 000007 (its id below every later one; since
    // 000010 a row of one job).
    c.execute(
        "INSERT INTO routing_log (source_id, message_id, job_id, routed_to, filtered) \
         VALUES ($1, 'legacy-1', -7, '[\"failing\"]', '{}')",
        &[&SOURCE_ID],
    )
    .await
    .expect("legacy routing row");
    c.execute(
        "INSERT INTO rt_jobs (id, destination_id, ordering_keys, message_ids, source_ids, payloads) \
         VALUES (-7, 'failing', '{legacy}', '{legacy-1}', ARRAY[$1], ARRAY[$2])",
        &[
            &SOURCE_ID,
            &json!({"method": "POST", "endpoint": failing.url, "headers": {}, "params": {},
                    "body": {"JSON": {"messageId": "legacy-1"}}})
            .to_string(),
        ],
    )
    .await
    .expect("legacy job");
    let doc = explain("legacy-1").await;
    assert_eq!(doc["destinations"]["failing"]["status"], "pending", "{doc}");

    // Routing and dedup rows pruned (the retention window passed) while jobs still wait:
    // a later request keeps a routing row, and the older jobs are found below its range.
    send_batches(&keel, &[track("late", 3, "e-late")], 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while explain("e-late").await["stage"] != "processed" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = dedup_key(SOURCE_ID, "e-late").to_string();
    c.execute(
        "DELETE FROM routing_jobs WHERE job_id <> (SELECT job_id FROM dedup WHERE key = $1::text::uuid)",
        &[&late],
    )
    .await
    .expect("prune routing");
    c.batch_execute("DELETE FROM routing_log")
        .await
        .expect("prune routing_log");
    c.execute("DELETE FROM dedup WHERE key <> $1::text::uuid", &[&late])
        .await
        .expect("prune dedup");
    let doc = explain("e-good2").await;
    assert_eq!(doc["destinations"]["failing"]["status"], "pending", "{doc}");
    let doc = explain("e-bad").await;
    assert_eq!(doc["destinations"]["picky"]["status"], "pending", "{doc}");
    assert_eq!(doc["destinations"]["failing"]["status"], "pending", "{doc}");
}

/// An `rt_jobs` row holds several jobs: the router loads rows up to a budget of jobs, and
/// a status write marks single jobs of a row that still waits (done, or retry state),
/// copies a dead job to the DLQ once (a repeated write copies nothing), applies marks only
/// under this node's lease, and deletes the row when its last job is done.
#[tokio::test]
async fn a_row_of_jobs_is_marked_job_by_job_and_goes_when_all_are_done() {
    use keel_actors::router::rows::{Outcome, Rows};
    use keel_actors::store::{
        run_migrations, DeadLetter, JobRef, JobState, PoolConfig, RetryUpdate, Store,
    };
    let db = TestDb::create().await;
    run_migrations(&db.url).await.expect("migrations");
    let store = Store::connect(&db.url, &PoolConfig::default()).expect("store");
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO leases (partition, owner) VALUES (0, 'local') \
         ON CONFLICT (partition) DO UPDATE SET owner = 'local'; \
         INSERT INTO rt_jobs (id, destination_id, partition, ordering_keys, message_ids, source_ids, payloads) VALUES \
         (1, 'd', 0, '{a,b,a}', '{m0,m1,m2}', '{s,s,s}', '{\"{\\\"n\\\":0}\",\"{\\\"n\\\":1}\",\"{\\\"n\\\":2}\"}'), \
         (2, 'd', 0, '{c,c}', '{m3,m4}', '{s,s}', '{3,4}'), \
         (3, 'd', 0, '{c,c}', '{m5,m6}', '{s,s}', '{5,6}')",
    )
    .await
    .expect("rows");

    // A budget of 4 jobs takes rows while fewer than 4 came before: rows 1 and 2.
    let loaded = store.load_rt_bundles("d", &[0], 0, 4).await.expect("load");
    assert_eq!(loaded.iter().map(|b| b.id).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(loaded[0].ordering_keys, ["a", "b", "a"]);
    assert_eq!(loaded[0].payloads[2], r#"{"n":2}"#);
    assert!(loaded[0].job_states().is_empty());

    let job = |index| JobRef { row: 1, index };
    let now = chrono::Utc::now();
    let mut rows = Rows::default();
    rows.loaded(1, 3);
    let batch = rows.settle(
        vec![
            Outcome::Delivered(job(0)),
            Outcome::Retry(RetryUpdate {
                job: job(1),
                attempts: 1,
                next_attempt_at: now,
                first_failed_at: now,
                error: "boom".into(),
            }),
            Outcome::Dead(DeadLetter {
                job: job(2),
                attempts: 1,
                reason: "refused: no".into(),
                last_status: Some(400),
                last_response: Some("no".into()),
            }),
        ],
        std::time::Instant::now(),
    );
    store.apply_status_ref(&batch).await.expect("write");
    // Written twice (as after a commit whose answer was lost): still one dead letter.
    store.apply_status_ref(&batch).await.expect("write again");
    let dead = c
        .query_one(
            "SELECT count(*), min(message_id), min(ordering_key), min(payload::text), min(reason) FROM dlq_jobs",
            &[],
        )
        .await
        .expect("dlq");
    assert_eq!(dead.get::<_, i64>(0), 1);
    assert_eq!(dead.get::<_, String>(1), "m2");
    assert_eq!(dead.get::<_, String>(2), "a");
    assert_eq!(dead.get::<_, String>(3), r#"{"n":2}"#);
    assert_eq!(dead.get::<_, String>(4), "refused: no");

    let states = store.load_rt_bundles("d", &[0], 0, 1).await.expect("load")[0].job_states();
    assert_eq!(states.get(&0), Some(&JobState::Done(1)));
    assert_eq!(states.get(&2), Some(&JobState::Done(1)));
    assert!(
        matches!(states.get(&1), Some(JobState::Retry { attempts: 1, next_attempt_ms, .. }) if *next_attempt_ms == now.timestamp_millis()),
        "{states:?}"
    );

    // Without the lease, marks wait (the new owner delivers the job again).
    c.batch_execute("UPDATE leases SET owner = 'other' WHERE partition = 0")
        .await
        .expect("lease moves");
    let mut other = Rows::default();
    let batch = other.settle(
        vec![Outcome::Delivered(JobRef { row: 2, index: 0 })],
        std::time::Instant::now(),
    );
    assert_eq!(batch.marks.len(), 1);
    store.apply_status_ref(&batch).await.expect("write");
    let state: Option<Value> = c
        .query_one("SELECT state FROM rt_jobs WHERE id = 2", &[])
        .await
        .expect("row 2")
        .get(0);
    assert_eq!(state, None);

    // The last job of row 1 delivered: the row goes, whoever holds the lease now.
    let mut rows = Rows::default();
    rows.loaded(1, 1);
    let batch = rows.settle(vec![Outcome::Delivered(job(1))], std::time::Instant::now());
    assert_eq!(batch.delivered, [1]);
    store.apply_status_ref(&batch).await.expect("write");
    let left: Vec<i64> = c
        .query("SELECT id FROM rt_jobs ORDER BY id", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, [2, 3]);
}
