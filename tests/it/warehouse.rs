//! Warehouse uploader end to end: a real SDK's mixed stream lands in every RudderStack
//! warehouse table of a separate Postgres database, checked column by column; schema
//! evolution adds columns and sends misfits to `keel_discards`; kill -9 during uploads
//! loses and duplicates nothing; a warehouse outage of 30 s under load delays only the
//! warehouse, which then catches up.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::proxy::{Mode, Proxy};
use crate::common::sink::{Sink, SinkMode};
use crate::common::*;

/// Default schema of the test source ("Test").
const SCHEMA: &str = "keel_test";

/// A workspace whose test source feeds a POSTGRES warehouse at `addr` (host:port) holding
/// database `wh`, plus the given extra destinations.
fn warehouse_workspace(addr: &str, wh: &TestDb, config: Value, extra: Vec<Value>) -> Value {
    let (host, port) = addr.split_once(':').expect("host:port");
    let mut cfg = json!({"host": host, "port": port, "database": wh.name, "user": "postgres",
                         "password": "", "sslMode": "disable", "uploadInterval": 1, "maxBatchRows": 500});
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), config.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    let mut dests = vec![
        json!({"id": "wh", "name": "Warehouse", "enabled": true, "config": cfg,
                                "destinationDefinition": {"name": "POSTGRES", "displayName": "Postgres"}}),
    ];
    dests.extend(extra);
    json!({"sources": [{"id": SOURCE_ID, "name": "Test", "writeKey": WRITE_KEY, "enabled": true,
                        "destinations": dests}]})
}

fn options(db: &TestDb, workspace: Value) -> KeelOptions {
    let mut opts = fast_router(KeelOptions::new(db));
    opts.workspace = workspace;
    opts.env("KEEL_WAREHOUSE__RETRY_BASE_MS", "200")
        .env("KEEL_WAREHOUSE__RETRY_MAX_BACKOFF_MS", "2000")
}

async fn count(wh: &tokio_postgres::Client, table: &str) -> i64 {
    match wh
        .query_one(&format!("SELECT count(*) FROM {SCHEMA}.{table}"), &[])
        .await
    {
        Ok(r) => r.get(0),
        Err(_) => 0, // not created yet
    }
}

/// Waits until `table` holds `n` rows; returns the count seen last.
async fn wait_rows(wh: &tokio_postgres::Client, table: &str, n: i64, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let c = count(wh, table).await;
        if c >= n || Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Column name → type of a warehouse table.
async fn column_types(wh: &tokio_postgres::Client, table: &str) -> Vec<(String, String)> {
    wh.query(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = $2 ORDER BY column_name",
        &[&SCHEMA, &table],
    )
    .await
    .expect("columns")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn type_of<'a>(cols: &'a [(String, String)], name: &str) -> Option<&'a str> {
    cols.iter()
        .find(|(c, _)| c == name)
        .map(|(_, t)| t.as_str())
}

/// One row of a table as JSON (`to_jsonb`), found by id.
async fn row(wh: &tokio_postgres::Client, table: &str, id: &str) -> Value {
    wh.query_one(
        &format!("SELECT to_jsonb(t) FROM {SCHEMA}.{table} t WHERE id = $1"),
        &[&id],
    )
    .await
    .unwrap_or_else(|e| panic!("{table} row {id}: {e}"))
    .get(0)
}

#[tokio::test]
async fn real_sdk_stream_fills_every_warehouse_table() {
    let db = TestDb::create().await;
    let wh_db = TestDb::create().await;
    let keel = Keel::start(options(
        &db,
        warehouse_workspace("127.0.0.1:5432", &wh_db, json!({}), vec![]),
    ))
    .await;
    const BURST: usize = 200;
    let report = crate::sdk::send_with_sdk(&keel, "python", "rudder", "wh", BURST).await;
    let sent = report["sent"].as_array().expect("sent");
    assert_eq!(sent.len(), BURST + 6);
    let wh = wh_db.client().await;
    let tracks = wait_rows(&wh, "tracks", BURST as i64 + 1, Duration::from_secs(60)).await;
    assert_eq!(tracks, BURST as i64 + 1, "log:\n{}", keel.log_text());
    for (table, n) in [
        ("burst", BURST as i64),
        ("order_completed", 1),
        ("identifies", 1),
        ("users", 1),
        ("pages", 1),
        ("screens", 1),
        ("groups", 1),
        ("aliases", 1),
    ] {
        assert_eq!(
            wait_rows(&wh, table, n, Duration::from_secs(20)).await,
            n,
            "{table}"
        );
    }

    // Every messageId in exactly one row of its table.
    let ids: HashSet<String> = wh
        .query(&format!("SELECT id FROM {SCHEMA}.tracks"), &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for s in sent.iter().filter(|s| s["type"] == "track") {
        assert!(ids.contains(s["messageId"].as_str().expect("id")), "{s}");
    }

    let user = "wh-u1";
    let order = row(&wh, "order_completed", "wh-rudder-track-0").await;
    assert_eq!(order["user_id"], user);
    assert_eq!(order["event"], "order_completed");
    assert_eq!(order["event_text"], "Order Completed");
    assert_eq!(order["revenue"], 42.5);
    assert_eq!(order["currency"], "EUR");
    assert_eq!(order["context_library_name"], "analytics-python");
    assert!(order["context_library_version"].is_string(), "{order}");
    for ts in [
        "received_at",
        "sent_at",
        "timestamp",
        "original_timestamp",
        "uuid_ts",
    ] {
        assert!(order[ts].is_string(), "{ts} in {order}");
    }
    let cols = column_types(&wh, "order_completed").await;
    assert_eq!(type_of(&cols, "revenue"), Some("double precision"));
    assert_eq!(type_of(&cols, "currency"), Some("text"));
    assert_eq!(
        type_of(&cols, "received_at"),
        Some("timestamp with time zone")
    );
    assert_eq!(type_of(&cols, "id"), Some("text"));

    let tracks_row = row(&wh, "tracks", "wh-rudder-track-0").await;
    assert_eq!(tracks_row["event_text"], "Order Completed");
    assert!(
        tracks_row.get("revenue").is_none(),
        "tracks has no properties"
    );

    let burst = row(&wh, "burst", "wh-rudder-burst-7").await;
    assert_eq!(burst["i"], 7);
    assert_eq!(burst["user_id"], "wh-u7");
    assert_eq!(
        type_of(&column_types(&wh, "burst").await, "i"),
        Some("bigint")
    );

    let identify = row(&wh, "identifies", "wh-rudder-identify-0").await;
    assert_eq!(identify["user_id"], user);
    assert_eq!(identify["email"], "wh@example.com");
    assert_eq!(identify["name"], "Ada Lovelace");
    assert_eq!(identify["plan"], "pro");

    let u = row(&wh, "users", user).await;
    assert_eq!(u["email"], "wh@example.com");
    assert_eq!(u["plan"], "pro");
    assert!(u["received_at"].is_string());

    let page = row(&wh, "pages", "wh-rudder-page-0").await;
    assert_eq!(page["name"], "Home");
    assert_eq!(page["url"], "https://keel.test/wh/home");

    let screen = row(&wh, "screens", "wh-rudder-screen-0").await;
    assert_eq!(screen["name"], "Dashboard");
    assert_eq!(screen["tab"], "overview");
    assert_eq!(screen["visits"], 3);

    let group = row(&wh, "groups", "wh-rudder-group-0").await;
    assert_eq!(group["group_id"], "wh-g1");
    assert_eq!(group["name"], "Acme Inc");

    let alias = row(&wh, "aliases", "wh-rudder-alias-0").await;
    assert_eq!(alias["previous_id"], "wh-anon");
    assert_eq!(alias["user_id"], user);

    let metrics = keel.metrics().await;
    assert!(
        metrics.contains("keel_warehouse_events_loaded_total{destination=\"wh\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("keel_warehouse_lag_seconds{destination=\"wh\"}"));
}

#[tokio::test]
async fn new_keys_add_columns_and_misfits_go_to_discards() {
    let db = TestDb::create().await;
    let wh_db = TestDb::create().await;
    // TLS (the local server uses a self-signed certificate, which `require` accepts).
    let keel = Keel::start(options(
        &db,
        warehouse_workspace(
            "127.0.0.1:5432",
            &wh_db,
            json!({"sslMode": "require"}),
            vec![],
        ),
    ))
    .await;
    let wh = wh_db.client().await;
    let ev = |id: &str, props: Value| json!({"type": "track", "userId": "u1", "event": "Signup", "messageId": id, "properties": props});
    send_batches(&keel, &[ev("e1", json!({"plan": "basic", "seats": 3}))], 10).await;
    assert_eq!(
        wait_rows(&wh, "signup", 1, Duration::from_secs(30)).await,
        1,
        "log:\n{}",
        keel.log_text()
    );
    let ssl = wh
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'keel-warehouse' AND a.datname = $1",
            &[&wh_db.name],
        )
        .await
        .expect("pg_stat_ssl");
    let (tls, plain): (i64, i64) = (ssl.get(0), ssl.get(1));
    assert!(tls >= 1, "the uploader's connections use TLS");
    assert_eq!(plain, 0, "no plain connection");
    let before = column_types(&wh, "signup").await;
    assert_eq!(type_of(&before, "seats"), Some("bigint"));
    assert_eq!(type_of(&before, "trial"), None);

    send_batches(
        &keel,
        &[ev(
            "e2",
            json!({"plan": "pro", "seats": "many", "trial": true, "tags": ["a", "b"],
                           "startedAt": "2026-05-01T10:00:00.000Z"}),
        )],
        10,
    )
    .await;
    assert_eq!(
        wait_rows(&wh, "signup", 2, Duration::from_secs(30)).await,
        2
    );
    let after = column_types(&wh, "signup").await;
    assert_eq!(type_of(&after, "trial"), Some("boolean"));
    assert_eq!(type_of(&after, "tags"), Some("jsonb"));
    assert_eq!(
        type_of(&after, "started_at"),
        Some("timestamp with time zone")
    );
    assert_eq!(type_of(&after, "seats"), Some("bigint"), "type kept");

    let e2 = row(&wh, "signup", "e2").await;
    assert_eq!(e2["plan"], "pro", "the rest of the row loads");
    assert_eq!(e2["trial"], true);
    assert_eq!(e2["tags"], json!(["a", "b"]));
    assert!(e2["seats"].is_null());
    let discards = wh
        .query(
            &format!(
                "SELECT table_name, column_name, column_value, reason, row_id \
                 FROM {SCHEMA}.keel_discards"
            ),
            &[],
        )
        .await
        .expect("discards");
    assert_eq!(discards.len(), 1);
    let d = &discards[0];
    assert_eq!(d.get::<_, String>(0), "signup");
    assert_eq!(d.get::<_, String>(1), "seats");
    assert_eq!(d.get::<_, String>(2), "many");
    assert!(
        d.get::<_, String>(3).contains("bigint"),
        "{}",
        d.get::<_, String>(3)
    );
    assert_eq!(d.get::<_, String>(4), "e2");
    assert!(keel
        .metrics()
        .await
        .contains("keel_warehouse_discards_total{destination=\"wh\"} 1"));
}

#[tokio::test]
async fn kill_during_uploads_then_restart_loads_every_event_once() {
    let db = TestDb::create().await;
    let wh_db = TestDb::create().await;
    let ws = warehouse_workspace(
        "127.0.0.1:5432",
        &wh_db,
        json!({"maxBatchRows": 100}),
        vec![],
    );
    const N: usize = 3000;
    let events: Vec<Value> = (0..N)
        .map(|i| {
            if i % 10 == 0 {
                json!({"type": "identify", "userId": format!("u{}", i % 50), "messageId": format!("m{i}"),
                       "traits": {"seq": i}})
            } else {
                json!({"type": "track", "userId": format!("u{}", i % 50), "event": "Tick",
                       "messageId": format!("m{i}"), "properties": {"i": i}})
            }
        })
        .collect();
    let tracks_n = (N - N / 10) as i64;
    let mut keel = Keel::start(options(&db, ws.clone())).await;
    send_batches(&keel, &events, 100).await;
    let wh = wh_db.client().await;
    // Kill it while loads are under way, three times.
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while kills < 3 && Instant::now() < deadline {
        let c = count(&wh, "tick").await;
        if c > (kills as i64) * 500 && c < tracks_n {
            keel.kill();
            kills += 1;
            keel = Keel::start(options(&db, ws.clone())).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(kills > 0, "never caught an upload in progress");
    assert_eq!(
        wait_rows(&wh, "tick", tracks_n, Duration::from_secs(60)).await,
        tracks_n,
        "log:\n{}",
        keel.log_text()
    );
    assert_eq!(
        wait_rows(&wh, "identifies", (N / 10) as i64, Duration::from_secs(20)).await,
        (N / 10) as i64
    );
    let distinct: i64 = wh
        .query_one(&format!("SELECT count(DISTINCT i) FROM {SCHEMA}.tick"), &[])
        .await
        .expect("distinct")
        .get(0);
    assert_eq!(distinct, tracks_n, "every event exactly once");
    assert_eq!(count(&wh, "tracks").await, tracks_n);
    // users holds the latest traits of each user.
    let users = wh
        .query(
            &format!("SELECT id, seq FROM {SCHEMA}.users ORDER BY id"),
            &[],
        )
        .await
        .expect("users");
    assert_eq!(users.len(), 5);
    for u in &users {
        let id: String = u.get(0);
        let n: usize = id[1..].parse().expect("user number");
        let last = (0..N)
            .rev()
            .find(|i| i % 10 == 0 && i % 50 == n)
            .expect("last identify");
        assert_eq!(u.get::<_, i64>(1), last as i64, "{id}");
    }
    let left = db.count("SELECT count(*) FROM wh_jobs").await;
    assert_eq!(left, 0, "loaded jobs are deleted");
}

/// Steady load for `secs`: 20 `Beat` events every 100 ms, numbered from `start`; returns
/// the next number.
async fn send_for(keel: &Keel, start: usize, secs: u64) -> usize {
    let client = http();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut i = start;
    while Instant::now() < until {
        let batch: Vec<Value> = (i..i + 20)
            .map(|i| {
                json!({"type": "track", "userId": format!("u{}", i % 7), "event": "Beat",
                       "messageId": format!("b{i}"), "properties": {"i": i}})
            })
            .collect();
        post_batch(&client, &keel.url("/v1/batch"), &batch).await;
        i += 20;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    i
}

#[tokio::test]
async fn warehouse_outage_delays_only_the_warehouse_then_catches_up() {
    let db = TestDb::create().await;
    let wh_db = TestDb::create().await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let sink = Sink::start(SinkMode::Ok).await;
    let hook = json!({"id": "hook", "name": "Hook", "enabled": true,
                      "config": {"webhookUrl": sink.url, "webhookMethod": "POST"},
                      "destinationDefinition": {"name": "WEBHOOK"}});
    let ws = warehouse_workspace(&proxy.addr, &wh_db, json!({}), vec![hook]);
    let keel = Keel::start(options(&db, ws)).await;
    let wh = wh_db.client().await;
    let mut sent = send_for(&keel, 0, 3).await;
    assert!(wait_rows(&wh, "beat", sent as i64, Duration::from_secs(20)).await >= sent as i64);

    proxy.set(Mode::Refuse);
    let outage_start = sent;
    let before_sink = sink.delivered().len();
    sent = send_for(&keel, sent, 30).await;
    // During the outage the webhook kept up and the warehouse did not.
    let delivered = sink.wait_delivered(sent, Duration::from_secs(10)).await;
    assert_eq!(
        delivered, sent,
        "webhook unaffected by the warehouse outage"
    );
    assert!(sink.delivered().len() > before_sink);
    let during = count(&wh, "beat").await;
    assert!(
        during <= outage_start as i64,
        "nothing loads while the warehouse is down"
    );
    let metrics = keel.metrics().await;
    let failed = metrics
        .lines()
        .find(|l| {
            l.starts_with("keel_warehouse_batches_total{destination=\"wh\",outcome=\"failed\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failed >= 1.0, "{metrics}");
    let lag = metrics
        .lines()
        .find(|l| l.starts_with("keel_warehouse_lag_seconds{destination=\"wh\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(lag > 5.0, "lag shows the backlog: {lag}");

    proxy.set(Mode::Pass);
    let recovered_at = Instant::now();
    assert_eq!(
        wait_rows(&wh, "beat", sent as i64, Duration::from_secs(30)).await,
        sent as i64,
        "log:\n{}",
        keel.log_text()
    );
    let caught_up = recovered_at.elapsed();
    assert!(
        caught_up < Duration::from_secs(30),
        "caught up in {caught_up:?}"
    );
    let distinct: i64 = wh
        .query_one("SELECT count(DISTINCT id) FROM keel_test.beat", &[])
        .await
        .expect("distinct")
        .get(0);
    assert_eq!(distinct, sent as i64);
}
