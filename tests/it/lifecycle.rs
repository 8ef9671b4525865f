//! Process lifecycle: acknowledged events survive SIGKILL, SIGTERM drains in-flight work and
//! exits 0, migrations run once under concurrency, and the embedded database default.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn every_acked_event_survives_sigkill() {
    let db = TestDb::create().await;
    let mut keel = Keel::start(KeelOptions::new(&db)).await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for worker in 0..16 {
        let url = keel.url("/v1/batch");
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            let client = http();
            for i in 0..10_000 {
                let ids: Vec<String> = (0..10).map(|j| format!("w{worker}-r{i}-e{j}")).collect();
                let batch: Vec<_> = ids.iter().map(|id| json!({"type": "track", "userId": format!("u{worker}"), "event": "E", "messageId": id})).collect();
                let res = client.post(&url).header("Authorization", basic(WRITE_KEY)).json(&json!({"batch": batch})).send().await;
                match res {
                    Ok(r) if r.status().as_u16() == 200 => acked.lock().expect("lock").extend(ids),
                    _ => break, // the server died mid-request: not acked, may or may not be stored
                }
            }
        }));
    }
    // Kill once a good number of acks are in.
    for _ in 0..600 {
        if acked.lock().expect("lock").len() >= 5_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    keel.kill();
    for s in senders {
        let _ = s.await;
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 5_000,
        "only {} acks before the kill",
        acked.len()
    );

    let keel = Keel::start(KeelOptions::new(&db)).await;
    let stored: HashSet<String> = stored_events(&db)
        .await
        .iter()
        .filter_map(|e| e["messageId"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acked events lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    // And the restarted server keeps accepting.
    let res = http()
        .post(keel.url("/v1/track"))
        .header("Authorization", basic(WRITE_KEY))
        .json(&json!({"userId": "u", "event": "after-restart"}))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 200);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let db = TestDb::create().await;
    let mut keel =
        Keel::start(KeelOptions::new(&db).env("KEEL_GATEWAY__MAX_WAIT_MS", "1500")).await;
    // With a 1.5 s group-commit wait these requests are all waiting for their flush when
    // SIGTERM comes; half a second lets 20 local connections open even on a busy machine
    // (80 ms did not, with the whole suite running on 2 cores).
    let mut inflight = Vec::new();
    for i in 0..20 {
        let url = keel.url("/v1/track");
        inflight.push(tokio::spawn(async move {
            http()
                .post(url)
                .header("Authorization", basic(WRITE_KEY))
                .json(&json!({"userId": "u", "event": "E", "messageId": format!("t-{i}")}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let code = tokio::task::spawn_blocking(move || {
        let code = keel.terminate();
        (code, keel.log_text())
    })
    .await
    .expect("join");
    let mut statuses = Vec::new();
    for f in inflight {
        statuses.push(f.await.expect("join"));
    }
    assert_eq!(code.0, Some(0), "exit code; log:\n{}", code.1);
    let acked = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        acked, 20,
        "every in-flight request finished with 200: {statuses:?}"
    );
    assert_eq!(stored_events(&db).await.len(), 20);
    assert!(code.1.contains("shutting down"), "log:\n{}", code.1);
}

#[tokio::test]
async fn concurrent_start_ups_migrate_once() {
    let db = TestDb::create().await;
    let (a, b) = tokio::join!(
        Keel::start(KeelOptions::new(&db)),
        Keel::start(KeelOptions::new(&db))
    );
    let versions = db
        .count("SELECT count(*) FROM __diesel_schema_migrations")
        .await;
    let on_disk = std::fs::read_dir(repo_root().join("migrations"))
        .expect("migrations dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count() as i64;
    assert_eq!(versions, on_disk);
    for k in [&a, &b] {
        let res = http()
            .post(k.url("/v1/track"))
            .header("Authorization", basic(WRITE_KEY))
            .json(&json!({"userId": "u", "event": "E"}))
            .send()
            .await
            .expect("post");
        assert_eq!(res.status().as_u16(), 200);
    }
}

#[tokio::test]
async fn embedded_default_starts_a_private_cluster_when_no_server_answers() {
    // Point the local probe at a closed port so Keel must run initdb/pg_ctl itself.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let work = tempfile::tempdir().expect("tempdir");
    // The cluster may run as the `postgres` user, which must be able to reach the directory.
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let db = TestDb::create().await; // only for KeelOptions' defaults; not used by this server
    let mut opts = KeelOptions::new(&db).env(
        "KEEL_DATABASE__LOCAL_URL",
        &format!("postgres://postgres@127.0.0.1:{port}"),
    );
    opts.database_url = None;
    opts.cwd = Some(work.path().to_path_buf());
    let mut keel = Keel::start(opts).await;
    let res = http()
        .post(keel.url("/v1/track"))
        .header("Authorization", basic(WRITE_KEY))
        .json(&json!({"userId": "u", "event": "Embedded"}))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 200, "log:\n{}", keel.log_text());
    let data = work.path().join("data/pg");
    assert!(
        data.join("PG_VERSION").exists(),
        "cluster initialised in ./data/pg"
    );
    let url = format!(
        "host={} port=5432 user=postgres dbname=keel",
        data.join("sock").display()
    );
    let n: i64 = pg(&url)
        .await
        .query_one("SELECT sum(event_count) FROM gw_jobs", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(n, 1);
    let code = tokio::task::spawn_blocking(move || keel.terminate())
        .await
        .expect("join");
    assert_eq!(code, Some(0));
    assert!(
        !data.join("postmaster.pid").exists(),
        "cluster stopped on exit"
    );
}

#[tokio::test]
async fn a_consuming_reader_misses_no_row_and_sees_each_users_requests_in_order() {
    let db = TestDb::create().await;
    // Several flushes commit at once (as several nodes' do): ids may commit out of order.
    let keel =
        Keel::start(KeelOptions::new(&db).env("KEEL_GATEWAY__MAX_CONCURRENT_FLUSHES", "4")).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for w in 0..16 {
        let url = keel.url("/v1/batch");
        senders.push(tokio::spawn(async move {
            let client = http();
            for i in 0..60 {
                let batch: Vec<_> = (0..20)
                    .map(|j| {
                        json!({"type": "track", "userId": format!("u{w}"), "event": "E",
                                    "messageId": format!("{w}-{i}-{j}"), "properties": {"seq": i}})
                    })
                    .collect();
                let res = client
                    .post(&url)
                    .header("Authorization", basic(WRITE_KEY))
                    .json(&json!({"batch": batch}))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(res.status().as_u16(), 200);
            }
        }));
    }
    // What the processor does: read the unconsumed rows in id order, consume (delete) them.
    // A row holds one flush's requests of a partition (several users may share it).
    let reader = {
        let (url, done) = (db.url.clone(), done.clone());
        tokio::spawn(async move {
            let c = pg(&url).await;
            let mut consumed: Vec<(i64, Vec<(String, i64)>)> = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let rows = c
                    .query("SELECT id, payload FROM gw_jobs ORDER BY id LIMIT 200", &[])
                    .await
                    .expect("read");
                let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                c.execute("DELETE FROM gw_jobs WHERE id = ANY($1)", &[&ids])
                    .await
                    .expect("consume");
                for r in &rows {
                    let events: Vec<Value> =
                        serde_json::from_str(r.get::<_, &str>(1)).expect("event array");
                    let events = events
                        .iter()
                        .map(|e| {
                            let user = e["userId"].as_str().expect("userId").to_owned();
                            (user, e["properties"]["seq"].as_i64().expect("seq"))
                        })
                        .collect();
                    consumed.push((r.get(0), events));
                }
                if finished && rows.is_empty() {
                    return consumed;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    for s in senders {
        s.await.expect("sender");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let consumed = reader.await.expect("reader");
    let stored: i64 = db
        .client()
        .await
        .query_one("SELECT count(DISTINCT job_id) FROM dedup", &[])
        .await
        .expect("rows stored")
        .get(0);
    assert_eq!(
        consumed.len() as i64,
        stored,
        "every stored row consumed once"
    );
    let events: usize = consumed.iter().map(|(_, e)| e.len()).sum();
    assert_eq!(events, 16 * 60 * 20, "every event consumed once");
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut out_of_id_order = 0;
    let mut max_id = 0;
    for (id, events) in &consumed {
        if *id < max_id {
            out_of_id_order += 1;
        }
        max_id = max_id.max(*id);
        for (user, seq) in events {
            // The 20 events of a request share its seq; requests go up.
            let prev = last.insert(user.clone(), *seq);
            assert!(
                prev.is_none_or(|p| p <= *seq),
                "{user}: request {seq} consumed after {prev:?}"
            );
        }
    }
    println!("rows consumed after a higher id (committed late): {out_of_id_order}");
}
