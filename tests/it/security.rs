//! Security controls: destinations may not point at loopback, private or link-local
//! addresses unless `allow_private_targets` is set (checked for IP literals and after DNS
//! resolution), per-source rate limits answer 429 with `Retry-After`, and destination
//! secrets never show in logs, metrics, the explain API or dead-letter listings.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::sink::{Responder, Sink, SinkMode};
use crate::common::*;

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let port = sink.url.rsplit(':').next().expect("port").to_owned();
    let by_name = format!("http://localhost:{port}");
    let mut opts = fast_router(KeelOptions::new(&db)).env("KEEL_ALLOW_PRIVATE_TARGETS", "false");
    opts.workspace = workspace_with_webhooks(&[
        ("literal", &sink.url, json!({})),
        ("by_name", &by_name, json!({})),
    ]);
    let keel = Keel::start(opts).await;
    let event = json!({"type": "track", "userId": "u", "event": "E", "messageId": "p1"});
    send_batches(&keel, &[event], 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let jobs = loop {
        let res = http()
            .get(keel.url("/admin/dlq"))
            .bearer_auth("admin-secret")
            .send()
            .await
            .expect("dlq");
        let body: Value = res.json().await.expect("json");
        let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
        if jobs.len() >= 2 || Instant::now() > deadline {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(jobs.len(), 2, "{jobs:?}\nlog:\n{}", keel.log_text());
    for j in &jobs {
        let reason = j["reason"].as_str().unwrap_or("");
        assert!(reason.contains("is not a public address"), "{reason}");
        assert!(reason.contains("allow_private_targets"), "{reason}");
    }
    assert!(
        sink.received().is_empty(),
        "nothing reached the private target"
    );

    // The same workspace with private targets allowed delivers.
    let db2 = TestDb::create().await;
    let mut opts = fast_router(KeelOptions::new(&db2));
    opts.workspace = workspace_with_webhooks(&[
        ("literal", &sink.url, json!({})),
        ("by_name", &by_name, json!({})),
    ]);
    let keel2 = Keel::start(opts).await;
    let event = json!({"type": "track", "userId": "u", "event": "E", "messageId": "p2"});
    send_batches(&keel2, &[event], 1).await;
    assert_eq!(sink.wait_delivered(2, Duration::from_secs(20)).await, 2);
}

#[tokio::test]
async fn per_source_rate_limits_answer_429_with_retry_after() {
    let db = TestDb::create().await;
    let mut ws = workspace();
    ws["sources"].as_array_mut().expect("sources").push(
        json!({"id": "src_other", "name": "Other", "writeKey": "other-key", "enabled": true}),
    );
    let mut opts = KeelOptions::new(&db)
        .env("KEEL_GATEWAY__RATE_LIMIT_EVENTS_PER_SEC", "20")
        .env("KEEL_GATEWAY__RATE_LIMIT_BURST", "50");
    opts.workspace = ws;
    let keel = Keel::start(opts).await;
    let batch = |n: usize, prefix: &str| {
        let events: Vec<Value> = (0..n)
            .map(|i| json!({"type": "track", "userId": "u", "event": "E", "messageId": format!("{prefix}{i}")}))
            .collect();
        json!({ "batch": events })
    };
    let post = |key: &'static str, body: Value| {
        let url = keel.url("/v1/batch");
        async move {
            let res = http()
                .post(url)
                .header("Authorization", basic(key))
                .json(&body)
                .send()
                .await
                .expect("send");
            let retry = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (
                res.status().as_u16(),
                retry,
                res.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, _, _) = post(WRITE_KEY, batch(50, "a")).await;
    assert_eq!(status, 200);
    let (status, retry, body) = post(WRITE_KEY, batch(10, "b")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "rate_limited");
    assert!(
        body["error"].as_str().unwrap_or("").contains("20 events/s"),
        "{body}"
    );
    let retry: u64 = retry.expect("Retry-After").parse().expect("seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let (status, _, body) = post(WRITE_KEY, batch(60, "c")).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "over_rate_burst");
    // Another source has its own budget.
    let (status, _, _) = post("other-key", batch(50, "d")).await;
    assert_eq!(status, 200);
    // After waiting as told, the source may send again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (status, _, body) = post(WRITE_KEY, batch(10, "e")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        stored_events(&db).await.len(),
        110,
        "refused requests stored nothing"
    );
    assert!(keel
        .metrics()
        .await
        .contains("keel_gateway_rate_limited_total{source=\"src_test\"} 1"));
}

const SECRET_SCRIPT: &str = r#"
export function process(event, destination) {
  const key = destination.Config.apiKey;
  if (event.event === "Leak") {
    const e = new Error(`the vendor refused key ${key}`); e.status = 400; throw e;
  }
  return { method: "POST", endpoint: destination.Config.url,
           headers: { "X-Api-Key": key, Authorization: `Bearer ${key}` }, params: { api_key: key },
           body: { JSON: { id: event.messageId } } };
}
"#;

#[tokio::test]
async fn destination_secrets_never_show_in_logs_metrics_explain_or_dead_letters() {
    let secret = "sk_live_5ecret_v4lue_123";
    let db = TestDb::create().await;
    // The vendor echoes the credentials it got in its refusal, as some APIs do.
    let sink = Sink::start(SinkMode::Answer(Responder::new(|target, _| {
        (
            401,
            String::new(),
            format!(r#"{{"error":"invalid key in {target}"}}"#),
        )
    })))
    .await;
    let scripts = tempfile::tempdir().expect("dir");
    let folder = scripts.path().join("destinations/SECRETIVE");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(folder.join("transform.js"), SECRET_SCRIPT).expect("script");
    let mut opts = fast_router(KeelOptions::new(&db))
        .env(
            "KEEL_TRANSFORM__SCRIPTS_DIR",
            &scripts.path().display().to_string(),
        )
        .env("KEEL_LOG", "debug");
    opts.workspace = json!({"sources": [{"id": "src", "name": "Test", "writeKey": WRITE_KEY,
        "enabled": true, "destinations": [{"id": "vendor", "name": "Vendor", "enabled": true,
        "config": {"url": sink.url, "apiKey": secret}, "destinationDefinition": {"name": "SECRETIVE"}}]}]});
    let keel = Keel::start(opts).await;
    let events = vec![
        json!({"type": "track", "userId": "u1", "event": "Fine", "messageId": "m-fine"}),
        json!({"type": "track", "userId": "u2", "event": "Leak", "messageId": "m-leak"}),
    ];
    send_batches(&keel, &events, 2).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let dlq = loop {
        let (_, dlq) = keel.admin_get("/admin/dlq?destination=vendor").await;
        if dlq["count"].as_u64() == Some(2) || Instant::now() > deadline {
            break dlq;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dlq["count"], 2, "{dlq}");
    // The vendor did get the key, and echoed it.
    let got = sink.received();
    assert!(got[0].target.contains(secret), "{}", got[0].target);
    let dlq_text = dlq.to_string();
    assert!(dlq_text.contains("[redacted]"), "{dlq_text}");
    assert!(
        dlq_text.contains("invalid key"),
        "the vendor's words stay: {dlq_text}"
    );
    let (_, fine) = keel.admin_get("/admin/events/m-fine").await;
    let (_, leak) = keel.admin_get("/admin/events/m-leak").await;
    let metrics = keel.metrics().await;
    let log = keel.log_text();
    assert!(log.contains("dead-lettered"), "the failures were logged");
    for (what, text) in [
        ("dlq", dlq_text),
        ("explain", fine.to_string()),
        ("explain", leak.to_string()),
        ("metrics", metrics),
        ("log", log),
    ] {
        assert!(!text.contains(secret), "{what} shows the secret: {text}");
    }
}
