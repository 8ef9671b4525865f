//! The `CLICKHOUSE` warehouse against Debian's `clickhouse-server` (18.16), started by the
//! test on a private port and data folder: every RudderStack table filled and typed, users
//! merged (latest non-null trait wins), a new key adds a column, a misfit goes to
//! `keel_discards`, and a batch loaded again (Keel killed between the load and the deletion
//! of its jobs) leaves one row per event under `FINAL`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::storage::ClickHouseServer;
use crate::common::*;

fn options(db: &TestDb, ch: &ClickHouseServer) -> KeelOptions {
    let mut opts = fast_router(KeelOptions::new(db));
    opts.workspace = json!({"sources": [{"id": SOURCE_ID, "name": "Test", "writeKey": WRITE_KEY, "enabled": true,
        "destinations": [{"id": "ch", "name": "ClickHouse", "enabled": true,
            "config": {"host": "127.0.0.1", "port": ch.port.to_string(), "database": "keel_wh",
                       "user": "default", "password": "keel", "uploadInterval": 1, "maxBatchRows": 500},
            "destinationDefinition": {"name": "CLICKHOUSE"}}]}]});
    opts.env("KEEL_WAREHOUSE__RETRY_BASE_MS", "200")
        .env("KEEL_WAREHOUSE__RETRY_MAX_BACKOFF_MS", "1000")
}

async fn wait_count(ch: &ClickHouseServer, table: &str, n: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let exists = ch
            .query(&format!("EXISTS TABLE keel_wh.{table}"))
            .await
            .trim()
            == "1";
        let c: u64 = if exists {
            ch.query(&format!("SELECT count() FROM keel_wh.{table} FINAL"))
                .await
                .trim()
                .parse()
                .unwrap_or(0)
        } else {
            0
        };
        if c >= n || Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn clickhouse_gets_every_table_typed_with_evolution_discards_and_dedup() {
    let ch = ClickHouseServer::start().await;
    let db = TestDb::create().await;
    let mut keel = Keel::start(options(&db, &ch)).await;
    let order = |id: &str, props: Value| {
        json!({"type": "track", "userId": "u1", "event": "Order Completed",
        "messageId": id, "properties": props, "context": {"library": {"name": "analytics-python"}}})
    };
    send_batches(
        &keel,
        &[
            order("o1", json!({"revenue": 42.5, "currency": "EUR", "items": [1, 2], "paid": true})),
            json!({"type": "identify", "userId": "u1", "messageId": "i1", "traits": {"email": "a@b.c", "plan": "free"}}),
            json!({"type": "page", "userId": "u1", "messageId": "p1", "name": "Home", "properties": {"url": "https://x.test/"}}),
            json!({"type": "screen", "userId": "u1", "messageId": "s1", "name": "Dash", "properties": {"visits": 3}}),
            json!({"type": "group", "userId": "u1", "messageId": "g1", "groupId": "acme", "traits": {"name": "Acme"}}),
            json!({"type": "alias", "userId": "u1", "messageId": "a1", "previousId": "anon"}),
        ],
        10,
    )
    .await;
    assert_eq!(
        wait_count(&ch, "aliases", 1, Duration::from_secs(60)).await,
        1,
        "log:\n{}",
        keel.log_text()
    );
    for (t, n) in [
        ("tracks", 1),
        ("order_completed", 1),
        ("identifies", 1),
        ("users", 1),
        ("pages", 1),
        ("screens", 1),
        ("groups", 1),
    ] {
        assert_eq!(
            wait_count(&ch, t, n, Duration::from_secs(10)).await,
            n,
            "{t}"
        );
    }
    let o = &ch.rows("SELECT * FROM keel_wh.order_completed FINAL").await[0];
    assert_eq!(o["id"], "o1");
    assert_eq!(o["revenue"], 42.5);
    assert_eq!(o["currency"], "EUR");
    assert_eq!(o["paid"], 1);
    assert_eq!(o["items"], "[1,2]");
    assert_eq!(o["event_text"], "Order Completed");
    assert_eq!(o["context_library_name"], "analytics-python");
    assert!(
        o["received_at"].as_str().is_some_and(|t| t.len() == 19),
        "{o}"
    );
    let types: Vec<Value> = ch
        .rows("SELECT name, type FROM system.columns WHERE database = 'keel_wh' AND table = 'order_completed'")
        .await;
    let ty = |c: &str| {
        types
            .iter()
            .find(|r| r["name"] == c)
            .map(|r| r["type"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(ty("revenue").as_deref(), Some("Nullable(Float64)"));
    assert_eq!(ty("paid").as_deref(), Some("Nullable(UInt8)"));
    assert_eq!(
        ty("received_at").as_deref(),
        Some("Nullable(DateTime('UTC'))")
    );
    assert_eq!(ty("id").as_deref(), Some("String"));
    let engine = ch
        .query("SELECT engine FROM system.tables WHERE database = 'keel_wh' AND name = 'tracks'")
        .await;
    assert_eq!(engine.trim(), "ReplacingMergeTree");
    assert_eq!(
        ch.rows("SELECT url FROM keel_wh.pages FINAL").await[0]["url"],
        "https://x.test/"
    );
    assert_eq!(
        ch.rows("SELECT visits FROM keel_wh.screens FINAL").await[0]["visits"],
        3
    );

    // Evolution, a misfit, and a users upsert that keeps the email.
    send_batches(
        &keel,
        &[
            order("o2", json!({"revenue": 5, "coupon": "WINTER"})),
            order("o3", json!({"revenue": "lots"})),
            json!({"type": "identify", "userId": "u1", "messageId": "i2", "traits": {"plan": "pro"}}),
        ],
        10,
    )
    .await;
    assert_eq!(
        wait_count(&ch, "order_completed", 3, Duration::from_secs(60)).await,
        3,
        "log:\n{}",
        keel.log_text()
    );
    assert_eq!(
        wait_count(&ch, "identifies", 2, Duration::from_secs(20)).await,
        2
    );
    let rows = ch
        .rows("SELECT id, revenue, coupon FROM keel_wh.order_completed FINAL ORDER BY id")
        .await;
    assert_eq!(
        rows,
        vec![
            json!({"id": "o1", "revenue": 42.5, "coupon": null}),
            json!({"id": "o2", "revenue": 5, "coupon": "WINTER"}),
            json!({"id": "o3", "revenue": null, "coupon": null}),
        ]
    );
    let d = ch.rows("SELECT table_name, column_name, column_value, row_id, reason FROM keel_wh.keel_discards FINAL").await;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (
            d[0]["column_name"].as_str(),
            d[0]["column_value"].as_str(),
            d[0]["row_id"].as_str()
        ),
        (Some("revenue"), Some("lots"), Some("o3"))
    );
    let u = ch
        .rows("SELECT id, email, plan FROM keel_wh.users FINAL")
        .await;
    assert_eq!(
        u,
        vec![json!({"id": "u1", "email": "a@b.c", "plan": "pro"})]
    );

    // A batch loaded twice: Keel killed after loading but before deleting its jobs. Simulated
    // by putting the jobs back (as a crash would leave them) and forgetting the positions.
    // Rows are visible in ClickHouse before the uploader records the batch (and counts it):
    // wait for the count, at most 20 s.
    let loaded = r#"keel_warehouse_events_loaded_total{destination="ch"} 9"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        let m = keel.metrics().await;
        if m.contains(loaded) || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(m.contains(loaded), "{m}");
    keel.kill();
    ch.query("TRUNCATE TABLE keel_wh._keel_loads").await;
    let db2 = db.client().await;
    db2.batch_execute(
        "INSERT INTO wh_jobs (destination_id, source_id, event_count, payload) \
         VALUES ('ch', 'src_test', 1, '[{\"type\":\"track\",\"messageId\":\"o2\",\"userId\":\"u1\",\"event\":\"Order Completed\",\"receivedAt\":\"2026-01-01T00:00:00.000Z\",\"properties\":{\"revenue\":5,\"coupon\":\"WINTER\"}}]')",
    )
    .await
    .expect("requeue");
    let keel = Keel::start(options(&db, &ch)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.count("SELECT count(*) FROM wh_jobs").await > 0 {
        assert!(
            Instant::now() < deadline,
            "not reloaded; log:\n{}",
            keel.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let raw: u64 = ch
        .query("SELECT count() FROM keel_wh.order_completed")
        .await
        .trim()
        .parse()
        .expect("n");
    assert!(raw >= 3);
    assert_eq!(
        wait_count(&ch, "order_completed", 3, Duration::from_secs(1)).await,
        3,
        "FINAL collapses the reload"
    );
    ch.query("OPTIMIZE TABLE keel_wh.order_completed FINAL")
        .await;
    let after: u64 = ch
        .query("SELECT count() FROM keel_wh.order_completed")
        .await
        .trim()
        .parse()
        .expect("n");
    assert_eq!(after, 3, "merged to one row per event");
}
