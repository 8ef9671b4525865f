//! Fault injection: an actor killed by a panic (through the `KEEL_TEST_HOOKS=1` admin hook)
//! is revived by the supervisor, delivery resumes with nothing lost, and the restart shows
//! in `/metrics`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::sink::{Sink, SinkMode};
use crate::common::*;

fn events(from: usize, n: usize) -> Vec<Value> {
    (from..from + n)
        .map(|i| {
            json!({"type": "track", "userId": format!("u{}", i % 5), "event": "E",
                        "messageId": format!("f{i}"), "properties": {"i": i}})
        })
        .collect()
}

async fn wait_unique(sink: &Sink, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: HashSet<String> = sink
            .delivered()
            .iter()
            .filter_map(|b| b["messageId"].as_str().map(str::to_owned))
            .collect();
        if got.len() >= n || Instant::now() > deadline {
            return got.len();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn panic_actor(keel: &Keel, body: Value) -> (u16, Value) {
    let res = http()
        .post(keel.url("/admin/test/panic"))
        .bearer_auth("admin-secret")
        .json(&body)
        .send()
        .await
        .expect("panic hook");
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

fn restarts(metrics: &str, actor: &str) -> f64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "keel_supervisor_restarts_total{{actor=\"{actor}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn panicking_router_and_processor_are_revived_and_nothing_is_lost() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let mut opts = fast_router(KeelOptions::new(&db)).env("KEEL_TEST_HOOKS", "1");
    opts.workspace = workspace_with_webhooks(&[("hook", &sink.url, json!({}))]);
    let keel = Keel::start(opts).await;
    send_batches(&keel, &events(0, 100), 20).await;
    assert_eq!(wait_unique(&sink, 100).await, 100);

    for (round, (actor, dest)) in [("router", Some("hook")), ("processor", None)]
        .into_iter()
        .enumerate()
    {
        let (status, body) = panic_actor(&keel, json!({"actor": actor, "destination": dest})).await;
        assert_eq!(status, 200, "{body}");
        let from = 100 + round * 100;
        send_batches(&keel, &events(from, 100), 20).await;
        assert_eq!(
            wait_unique(&sink, from + 100).await,
            from + 100,
            "delivery resumed after the {actor} panicked; log:\n{}",
            keel.log_text()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = keel.metrics().await;
            if restarts(&m, actor) >= 1.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no {actor} restart in /metrics:\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(keel.log_text().contains("injected panic"));

    // Without KEEL_TEST_HOOKS the hook does not exist.
    let db2 = TestDb::create().await;
    let plain = Keel::start(fast_router(KeelOptions::new(&db2))).await;
    let (status, _) = panic_actor(&plain, json!({"actor": "processor"})).await;
    assert_eq!(status, 404);
}
