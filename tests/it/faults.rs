//! Fault injection under continuous load, every test judged by the history checker
//! (`common/history.rs`): nothing acknowledged is lost, per-user order holds, duplicates are
//! counted. Faults: Keel killed with SIGKILL ten times, Postgres (a private cluster) crashed
//! and restarted, a destination that fails in every way a server can, and actors killed by
//! panics through the `KEEL_TEST_HOOKS=1` admin hook. Each runs a short version here (CI,
//! seconds); `KEEL_FAULT_LONG=1` runs the long version (`scripts/faults.sh`, minutes), whose
//! figures are in docs/reliability.md.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::history::{long_run, Load, LoadSpec, Report, Target};
use crate::common::pgcluster::PgCluster;
use crate::common::sink::{Sink, SinkMode};
use crate::common::*;

/// Prints a result line the long runs' figures are read from.
fn figures(fault: &str, spec: &LoadSpec, report: &Report, recovery: &str) {
    eprintln!("FIGURES | {fault} | {spec} | {report} | recovery {recovery}");
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The pipeline with one or more webhook sinks, fast retries, against `db_url`.
fn pipeline(db_url: &str, hooks: &[(&str, &str)]) -> KeelOptions {
    let hooks: Vec<(&str, &str, Value)> = hooks.iter().map(|(i, u)| (*i, *u, json!({}))).collect();
    let opts = KeelOptions {
        workspace: workspace_with_webhooks(&hooks),
        database_url: Some(db_url.to_owned()),
        env: vec![
            ("KEEL_ALLOW_PRIVATE_TARGETS".into(), "true".into()),
            // The same node across restarts: it takes its leases back at once.
            (
                "KEEL_CLUSTER__NODE_ID".into(),
                format!("node-{}", db_url.rsplit('/').next().unwrap_or("x")),
            ),
        ],
        cwd: None,
    };
    fast_router(opts)
}

#[tokio::test]
async fn kill_9_ten_times_under_load_loses_nothing_acknowledged() {
    let long = long_run();
    let (interval, spec) = if long {
        let spec = LoadSpec {
            users: 8,
            batch: 10,
            pause: Duration::ZERO,
        };
        (Duration::from_secs(5), spec)
    } else {
        let spec = LoadSpec {
            users: 4,
            batch: 5,
            pause: Duration::from_millis(5),
        };
        (Duration::from_millis(800), spec)
    };
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let start = || Keel::start(pipeline(&db.url, &[("hook", &sink.url)]));
    let mut keel = start().await;
    let target = Target::new(&keel.base);
    let load = Load::start(&target, spec);
    let mut worst = Duration::ZERO;
    for kill in 0..10 {
        assert!(
            load.wait_acked(spec.batch, Duration::from_secs(30)).await,
            "no acknowledgement before kill {kill}"
        );
        tokio::time::sleep(interval).await;
        keel.kill();
        let killed = Instant::now();
        keel = start().await;
        target.set(&keel.base);
        assert!(
            load.wait_acked(1, Duration::from_secs(30)).await,
            "no acknowledgement after restart {kill}; log:\n{}",
            keel.log_text()
        );
        worst = worst.max(killed.elapsed());
    }
    tokio::time::sleep(interval).await;
    let history = load.stop().await;
    let report = history
        .settle(&sink, &db.url, "hook", Duration::from_secs(120))
        .await;
    figures(
        "kill -9 ×10",
        &spec,
        &report,
        &format!("kill → next ack ≤ {}", secs(worst)),
    );
    report.assert_guarantees("kill -9 ten times");
}

#[tokio::test]
async fn postgres_restart_under_load_answers_503_then_recovers_within_5_s() {
    let long = long_run();
    let (restarts, outage) = if long {
        (3, Duration::from_secs(10))
    } else {
        (1, Duration::from_secs(3))
    };
    let spec = LoadSpec {
        users: 4,
        batch: 5,
        pause: Duration::from_millis(5),
    };
    let pg = std::sync::Arc::new(
        tokio::task::spawn_blocking(PgCluster::start)
            .await
            .expect("cluster"),
    );
    let url = pg.url("postgres");
    let sink = Sink::start(SinkMode::Ok).await;
    let keel = Keel::start(pipeline(&url, &[("hook", &sink.url)])).await;
    let target = Target::new(&keel.base);
    let load = Load::start(&target, spec);
    let mut worst = Duration::ZERO;
    let mut down_answers = 0;
    for round in 0..restarts {
        assert!(load.wait_acked(50, Duration::from_secs(30)).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A crash: no checkpoint, WAL replay at start.
        let p = pg.clone();
        tokio::task::spawn_blocking(move || p.stop("immediate"))
            .await
            .expect("stop");
        let down_from = Instant::now();
        tokio::time::sleep(outage).await;
        let down_to = Instant::now();
        let p = pg.clone();
        tokio::task::spawn_blocking(move || p.start_again())
            .await
            .expect("start");
        let back = Instant::now();
        assert!(
            load.wait_acked(1, Duration::from_secs(30)).await,
            "round {round}: no acknowledgement after Postgres came back; log:\n{}",
            keel.log_text()
        );
        let answers = load.answers();
        // Requests already answered 200 at the stop belong to commits before it; from one
        // second into the outage until the restart, every answer must be a 503 with a hint.
        let during: Vec<_> = answers
            .iter()
            .filter(|a| a.at > down_from + Duration::from_secs(1) && a.at < down_to)
            .collect();
        assert!(!during.is_empty(), "round {round}: no answers while down");
        for a in &during {
            assert_eq!(
                a.status, 503,
                "round {round}: answered while Postgres was down: {a:?}"
            );
            assert!(a.retry_after.is_some(), "503 without Retry-After: {a:?}");
            assert!(a.body.contains("storage_unavailable"), "{a:?}");
        }
        down_answers += during.len();
        let first_ok = answers
            .iter()
            .find(|a| a.at > back && a.status == 200)
            .expect("an acknowledgement after the restart");
        let recovery = first_ok.at - back;
        assert!(
            recovery <= Duration::from_secs(5),
            "round {round}: ingest recovered {recovery:?} after Postgres returned (limit 5 s)"
        );
        worst = worst.max(recovery);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let history = load.stop().await;
    let report = history
        .settle(&sink, &url, "hook", Duration::from_secs(120))
        .await;
    figures(
        &format!(
            "Postgres crash + restart ×{restarts}, {} s down ({down_answers} answers 503 while down)",
            outage.as_secs()
        ),
        &spec,
        &report,
        &format!("Postgres back → first 200 ≤ {}", secs(worst)),
    );
    report.assert_guarantees("Postgres restart");
    let ready = http()
        .get(keel.url("/ready"))
        .send()
        .await
        .expect("ready")
        .status();
    assert_eq!(ready.as_u16(), 200);
}

/// Per messageId, the sink's records in arrival order.
fn attempts(sink: &Sink) -> HashMap<String, Vec<crate::common::sink::Received>> {
    let mut by_id: HashMap<String, Vec<_>> = HashMap::new();
    for r in sink.received() {
        if let Some(id) = r.body["messageId"].as_str() {
            by_id.entry(id.to_owned()).or_default().push(r);
        }
    }
    by_id
}

#[tokio::test]
async fn a_destination_failing_every_way_keeps_order_and_loses_nothing() {
    let long = long_run();
    let scale = if long { 6 } else { 1 };
    let spec = LoadSpec {
        users: 6,
        batch: 5,
        pause: Duration::from_millis(20),
    };
    let db = TestDb::create().await;
    let chaos = Sink::start(SinkMode::Ok).await;
    let steady = Sink::start(SinkMode::Ok).await;
    let opts = pipeline(&db.url, &[("chaos", &chaos.url), ("steady", &steady.url)])
        .env("KEEL_ROUTER__MAX_ATTEMPTS", "100000")
        .env("KEEL_ROUTER__BREAKER_PROBE_INTERVAL_MS", "500");
    let keel = Keel::start(opts).await;
    let target = Target::new(&keel.base);
    let load = Load::start(&target, spec);
    let phase = |s: u64| Duration::from_secs(s * scale);

    // Everything at once, at random.
    chaos.set_mode(SinkMode::Chaos(vec![
        (0.10, SinkMode::Status(500)),
        (0.05, SinkMode::RetryAfter(1)),
        (0.02, SinkMode::Hang),
        (
            0.02,
            SinkMode::Slow {
                delay: Duration::from_secs(5),
                status: 200,
            },
        ),
        (0.05, SinkMode::Reset),
        (0.05, SinkMode::Garbage),
        (0.05, SinkMode::GarbageBody),
        (0.02, SinkMode::Status(400)),
    ]));
    tokio::time::sleep(phase(4)).await;
    // Bursts: 500s, a breather, 429s with Retry-After, a breather.
    for mode in [SinkMode::Status(500), SinkMode::RetryAfter(1)] {
        chaos.set_mode(mode);
        tokio::time::sleep(phase(1)).await;
        chaos.set_mode(SinkMode::Ok);
        tokio::time::sleep(phase(1)).await;
    }
    // A long outage: answering 503, then refusing (resets).
    chaos.set_mode(SinkMode::Status(503));
    tokio::time::sleep(phase(3)).await;
    chaos.set_mode(SinkMode::Reset);
    tokio::time::sleep(phase(3)).await;
    chaos.set_mode(SinkMode::Ok);
    let outage_end = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let history = load.stop().await;

    let steady_report = history
        .settle(&steady, &db.url, "steady", Duration::from_secs(60))
        .await;
    let report = history
        .settle(&chaos, &db.url, "chaos", Duration::from_secs(120))
        .await;
    let recovered = chaos
        .received()
        .iter()
        .find(|r| r.at > outage_end && r.status == 200)
        .map(|r| r.at - outage_end);
    figures(
        "destination faults: 500, 429+Retry-After, hang, 5 s answers, resets, garbage, 400; bursts; outage",
        &spec,
        &report,
        &format!(
            "outage end → first delivery {}",
            recovered.map_or("none".into(), secs)
        ),
    );
    figures("  … its healthy neighbour", &spec, &steady_report, "–");
    report.assert_guarantees("faulty destination");
    steady_report.assert_guarantees("healthy neighbour");
    assert_eq!(
        steady_report.duplicates, 0,
        "the healthy destination got duplicates"
    );
    assert!(
        steady_report.max_delivery_lag < Duration::from_secs(5),
        "isolation: the healthy destination lagged {:?} behind acknowledgement",
        steady_report.max_delivery_lag
    );
    assert!(recovered.is_some(), "no delivery after the outage ended");

    // Retry policy, from the sink's point of view.
    let by_id = attempts(&chaos);
    let mut after_429 = 0;
    for (id, tries) in &by_id {
        for pair in tries.windows(2) {
            let gap = pair[1].at - pair[0].at;
            if pair[0].status == 429 {
                after_429 += 1;
                assert!(
                    gap >= Duration::from_millis(900),
                    "{id}: retried {gap:?} after a 429 with Retry-After: 1"
                );
            }
            assert_ne!(pair[0].status, 400, "{id}: a 400 (permanent) was retried");
        }
    }
    assert!(after_429 > 0, "no 429 was retried");
    // Exactly the events whose last attempt was refused (400) are in the DLQ, with that
    // status. (One may also count as delivered: a 5 s answer the sink accepted after Keel
    // had given up on it, then a 400 on the retry.)
    let dlq = db
        .client()
        .await
        .query(
            "SELECT message_id, last_status, reason FROM dlq_jobs WHERE destination_id = 'chaos'",
            &[],
        )
        .await
        .expect("dlq");
    let refused: std::collections::HashSet<&str> = by_id
        .iter()
        .filter(|(_, tries)| tries.last().is_some_and(|r| r.status == 400))
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(dlq.len(), refused.len(), "{report}");
    assert!(report.dead_lettered <= dlq.len(), "{report}");
    for row in &dlq {
        let id: String = row.get(0);
        let status: Option<i32> = row.get(1);
        assert_eq!(
            status,
            Some(400),
            "{id} dead-lettered: {}",
            row.get::<_, String>(2)
        );
        assert!(
            refused.contains(id.as_str()),
            "{id} dead-lettered but not refused last"
        );
    }
}

async fn panic_actor(keel: &Keel, body: Value) -> (u16, Value) {
    keel.admin_post("/admin/test/panic", &body).await
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
async fn panicking_actors_are_revived_and_nothing_is_lost() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let keel =
        Keel::start(pipeline(&db.url, &[("hook", &sink.url)]).env("KEEL_TEST_HOOKS", "1")).await;
    let spec = LoadSpec {
        users: 4,
        batch: 5,
        pause: Duration::from_millis(10),
    };
    let load = Load::start(&Target::new(&keel.base), spec);
    let mut worst = Duration::ZERO;
    // The gateway writer too: until it is revived, ingest answers 429 and the load retries.
    for (actor, dest) in [
        ("router", Some("hook")),
        ("processor", None),
        ("gateway_writer", None),
        ("lease_keeper", None),
    ] {
        assert!(load.wait_acked(100, Duration::from_secs(30)).await);
        let (status, body) = panic_actor(&keel, json!({"actor": actor, "destination": dest})).await;
        assert_eq!(status, 200, "{body}");
        let panicked = Instant::now();
        let deadline = panicked + Duration::from_secs(10);
        loop {
            if restarts(&keel.metrics().await, actor) >= 1.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no {actor} restart in /metrics; log:\n{}",
                keel.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        worst = worst.max(panicked.elapsed());
    }
    assert!(load.wait_acked(100, Duration::from_secs(30)).await);
    let history = load.stop().await;
    let report = history
        .settle(&sink, &db.url, "hook", Duration::from_secs(60))
        .await;
    figures(
        "panic in router, processor, gateway writer, lease keeper",
        &spec,
        &report,
        &format!("panic → restart in /metrics ≤ {}", secs(worst)),
    );
    report.assert_guarantees("actor panics");
    assert!(keel.log_text().contains("injected panic"));

    // Without KEEL_TEST_HOOKS the hook does not exist.
    let db2 = TestDb::create().await;
    let plain = Keel::start(fast_router(KeelOptions::new(&db2))).await;
    let (status, _) = panic_actor(&plain, json!({"actor": "processor"})).await;
    assert_eq!(status, 404);
}
