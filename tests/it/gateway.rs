//! The Segment tracking API: every endpoint, both auth styles, gzip, every error class, and
//! what lands in Postgres (normalised fields, skew-corrected timestamp, merged context).

use serde_json::{json, Value};

use crate::common::proxy::{Mode, Proxy};
use crate::common::*;

async fn post(keel: &Keel, path: &str, auth: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = http().post(keel.url(path)).json(&body);
    if let Some(key) = auth {
        req = req.header("Authorization", basic(key));
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn post_raw(
    keel: &Keel,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = http().post(keel.url(path)).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, res.json().await.unwrap_or(Value::Null), headers)
}

fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "body: {}", got.1);
    assert_eq!(got.1["code"], code, "body: {}", got.1);
    assert!(
        got.1["error"].as_str().is_some_and(|s| !s.is_empty()),
        "error message in {}",
        got.1
    );
}

#[tokio::test]
async fn accepts_every_single_event_endpoint_and_stores_the_type() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    let cases = [
        (
            "identify",
            json!({"userId": "u1", "traits": {"email": "a@b.c"}}),
        ),
        (
            "track",
            json!({"userId": "u1", "event": "Order Completed", "properties": {"revenue": 10}}),
        ),
        ("page", json!({"anonymousId": "a1", "name": "Home"})),
        ("screen", json!({"anonymousId": "a1", "name": "Settings"})),
        (
            "group",
            json!({"userId": "u1", "groupId": "g1", "traits": {"plan": "pro"}}),
        ),
        ("alias", json!({"userId": "u1", "previousId": "a1"})),
    ];
    for (ty, body) in &cases {
        let got = post(&keel, &format!("/v1/{ty}"), Some(WRITE_KEY), body.clone()).await;
        assert_eq!(got, (200, json!({"success": true})), "{ty}");
    }
    let stored = stored_events(&db).await;
    assert_eq!(stored.len(), cases.len());
    for ((ty, body), event) in cases.iter().zip(&stored) {
        assert_eq!(event["type"], *ty);
        for (k, v) in body.as_object().expect("object") {
            assert_eq!(&event[k], v, "{ty}.{k}");
        }
    }
    let rows = db
        .client()
        .await
        .query("SELECT source_id, event_count FROM gw_jobs", &[])
        .await
        .expect("rows");
    assert!(rows
        .iter()
        .all(|r| r.get::<_, String>(0) == SOURCE_ID && r.get::<_, i32>(1) == 1));
}

#[tokio::test]
async fn a_batch_is_stored_as_one_row_per_partition_in_request_order() {
    use keel_actors::partition::partition_of;
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let batch: Vec<Value> = (0..200)
        .map(|i| json!({"type": "track", "userId": users[i % 40], "event": "E", "messageId": format!("m-{i}"),
                        "properties": {"seq": i}}))
        .collect();
    let got = post(
        &keel,
        "/v1/batch",
        None,
        json!({"writeKey": WRITE_KEY, "batch": batch}),
    )
    .await;
    assert_eq!(got.0, 200, "{got:?}");
    let rows = db
        .client()
        .await
        .query(
            "SELECT id, partition, event_count, payload::json FROM gw_jobs ORDER BY id",
            &[],
        )
        .await
        .expect("rows");
    let wanted: std::collections::BTreeSet<i32> =
        users.iter().map(|u| partition_of(u, 16)).collect();
    let stored: std::collections::BTreeSet<i32> = rows.iter().map(|r| r.get::<_, i32>(1)).collect();
    assert_eq!(
        stored, wanted,
        "one row per partition the request's users fall in"
    );
    assert_eq!(rows.len(), wanted.len());
    let mut total = 0;
    for r in &rows {
        let (id, part, count, events) = (
            r.get::<_, i64>(0),
            r.get::<_, i32>(1),
            r.get::<_, i32>(2),
            r.get::<_, Value>(3),
        );
        let events = events.as_array().expect("array");
        assert_eq!(events.len() as i32, count);
        total += events.len();
        let mut last_seq = -1;
        for e in events {
            assert_eq!(
                partition_of(e["userId"].as_str().expect("userId"), 16),
                part
            );
            let seq = e["properties"]["seq"].as_i64().expect("seq");
            assert!(seq > last_seq, "request order kept within a partition");
            last_seq = seq;
            let owner: i64 = db
                .client()
                .await
                .query_one(
                    "SELECT job_id FROM dedup WHERE key = $1::text::uuid",
                    &[&keel_actors::store::dedup_key(
                        SOURCE_ID,
                        e["messageId"].as_str().expect("mid"),
                    )
                    .to_string()],
                )
                .await
                .expect("dedup row")
                .get(0);
            assert_eq!(owner, id, "dedup names the row holding the event");
        }
    }
    assert_eq!(total, 200);
}

#[tokio::test]
async fn batch_and_import_store_one_row_per_request_with_merged_context() {
    let db = TestDb::create().await;
    // One partition: one row per request (several partitions split it, tested below).
    let keel = Keel::start(KeelOptions::new(&db).env("KEEL_CLUSTER__PARTITIONS", "1")).await;
    let body = json!({
        "writeKey": WRITE_KEY,
        "sentAt": "2030-01-01T00:00:10.000Z",
        "context": {"library": {"name": "analytics-test", "version": "9.9"}, "locale": "de-DE"},
        "integrations": {"All": true, "Webhook": false},
        "batch": [
            {"type": "identify", "userId": "u1", "messageId": "m-1", "traits": {"plan": "pro"},
             "originalTimestamp": "2030-01-01T00:00:00.000Z", "context": {"locale": "fr-FR"}},
            {"type": "track", "anonymousId": "a1", "messageId": "m-2", "event": "Clicked",
             "timestamp": "2030-01-01T00:00:05.000Z"},
            {"type": "page", "userId": "u1", "messageId": "m-3"}
        ]
    });
    for path in ["/v1/batch", "/v1/import"] {
        let got = post(&keel, path, None, body.clone()).await;
        assert_eq!(got, (200, json!({"success": true})), "{path}");
    }
    assert_eq!(job_count(&db).await, 2, "one gw_jobs row per request");
    let rows = db
        .client()
        .await
        .query(
            "SELECT event_count, received_at, payload::json->0->>'receivedAt' FROM gw_jobs ORDER BY id",
            &[],
        )
        .await
        .expect("rows");
    for r in &rows {
        assert_eq!(r.get::<_, i32>(0), 3);
    }
    let stored = stored_events(&db).await;
    assert_eq!(stored.len(), 6);
    let (e0, e1, e2) = (&stored[0], &stored[1], &stored[2]);
    // Batch context merged under each event's own; the event's own keys win.
    assert_eq!(e0["context"]["locale"], "fr-FR");
    assert_eq!(e1["context"]["locale"], "de-DE");
    assert_eq!(
        e0["context"]["library"],
        json!({"name": "analytics-test", "version": "9.9"})
    );
    assert_eq!(e2["integrations"], json!({"All": true, "Webhook": false}));
    assert!(e0.get("writeKey").is_none(), "write key is not stored");
    // Skew correction: the client clock runs ahead of ours; timestamp = receivedAt − (sentAt − originalTimestamp).
    let received =
        chrono::DateTime::parse_from_rfc3339(e0["receivedAt"].as_str().expect("receivedAt"))
            .expect("ts");
    let ts0 =
        chrono::DateTime::parse_from_rfc3339(e0["timestamp"].as_str().expect("ts")).expect("ts");
    let ts1 =
        chrono::DateTime::parse_from_rfc3339(e1["timestamp"].as_str().expect("ts")).expect("ts");
    assert_eq!((received - ts0).num_milliseconds(), 10_000);
    assert_eq!(
        (received - ts1).num_milliseconds(),
        5_000,
        "Segment's timestamp counts as originalTimestamp"
    );
    assert_eq!(e0["originalTimestamp"], "2030-01-01T00:00:00.000Z");
    assert_eq!(e0["sentAt"], "2030-01-01T00:00:10.000Z");
    // No client time at all: timestamp is receivedAt.
    assert_eq!(e2["timestamp"], e2["receivedAt"]);
    assert_eq!(e2["context"]["ip"], "127.0.0.1");
    let dedup = db
        .client()
        .await
        .query("SELECT key, job_id FROM dedup", &[])
        .await
        .expect("dedup");
    let first_job: i64 = db
        .client()
        .await
        .query_one("SELECT min(id) FROM gw_jobs", &[])
        .await
        .expect("min")
        .get(0);
    assert_eq!(dedup.len(), 3, "messageIds recorded once each");
    assert!(
        dedup.iter().all(|r| r.get::<_, i64>(1) == first_job),
        "dedup names the first job"
    );
}

#[tokio::test]
async fn fills_in_message_id_received_at_and_keeps_library() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    let got = post(
        &keel,
        "/v1/track",
        Some(WRITE_KEY),
        json!({
            "userId": 7, "event": "E", "context": {"library": {"name": "lib", "version": "1"}}
        }),
    )
    .await;
    assert_eq!(got.0, 200);
    let e = &stored_events(&db).await[0];
    let id = e["messageId"].as_str().expect("messageId");
    assert_eq!(uuid_version(id), Some('4'), "{id}");
    assert_eq!(e["userId"], "7", "numeric ids become strings");
    assert_eq!(
        e["context"]["library"],
        json!({"name": "lib", "version": "1"})
    );
    let received =
        chrono::DateTime::parse_from_rfc3339(e["receivedAt"].as_str().expect("receivedAt"))
            .expect("rfc3339");
    assert!(
        (chrono::Utc::now() - received.with_timezone(&chrono::Utc))
            .num_seconds()
            .abs()
            < 60
    );
}

fn uuid_version(id: &str) -> Option<char> {
    (id.len() == 36).then(|| id.chars().nth(14)).flatten()
}

#[tokio::test]
async fn accepts_gzip_bodies() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    let auth = basic(WRITE_KEY);
    let batch = json!({"batch": [{"type": "track", "userId": "u", "event": "Zipped", "messageId": "gz-1"}]});
    let got = post_raw(
        &keel,
        "/v1/batch",
        &[
            ("Authorization", &auth),
            ("Content-Encoding", "gzip"),
            ("Content-Type", "application/json"),
        ],
        gzip(batch.to_string().as_bytes()),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    let single = json!({"userId": "u", "traits": {"z": true}, "messageId": "gz-2"});
    let got = post_raw(
        &keel,
        "/v1/identify",
        &[("Authorization", &auth), ("Content-Encoding", "gzip")],
        gzip(single.to_string().as_bytes()),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    let stored = stored_events(&db).await;
    assert_eq!(
        stored
            .iter()
            .map(|e| e["messageId"].clone())
            .collect::<Vec<_>>(),
        vec![json!("gz-1"), json!("gz-2")]
    );
}

#[tokio::test]
async fn rejects_missing_unknown_and_disabled_write_keys_with_401() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    let event = json!({"userId": "u", "event": "E"});
    assert_error(
        &post(&keel, "/v1/track", None, event.clone()).await,
        401,
        "missing_write_key",
    );
    assert_error(
        &post(&keel, "/v1/track", Some("nope"), event.clone()).await,
        401,
        "invalid_write_key",
    );
    assert_error(
        &post(&keel, "/v1/track", Some(DISABLED_KEY), event.clone()).await,
        401,
        "source_disabled",
    );
    let mut with_key = event.clone();
    with_key["writeKey"] = json!("nope");
    assert_error(
        &post(&keel, "/v1/track", None, with_key).await,
        401,
        "invalid_write_key",
    );
    assert_error(&post(&keel, "/v1/batch", None, json!({"writeKey": DISABLED_KEY, "batch": [{"type": "track", "userId": "u", "event": "E"}]})).await, 401, "source_disabled");
    let got = post_raw(
        &keel,
        "/v1/track",
        &[("Authorization", "Bearer abc")],
        event.to_string().into_bytes(),
    )
    .await;
    assert_error(&(got.0, got.1), 401, "invalid_authorization");
    assert_eq!(job_count(&db).await, 0);
}

#[tokio::test]
async fn rejects_bad_input_with_json_errors_naming_the_problem() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    let auth = basic(WRITE_KEY);
    let h: &[(&str, &str)] = &[
        ("Authorization", &auth),
        ("Content-Type", "application/json"),
    ];

    let got = post_raw(&keel, "/v1/track", h, b"{\"userId\": ".to_vec()).await;
    assert_error(&(got.0, got.1), 400, "invalid_json");
    let got = post_raw(&keel, "/v1/track", h, b"[1,2]".to_vec()).await;
    assert_error(&(got.0, got.1), 400, "invalid_json");
    let got = post_raw(&keel, "/v1/batch", h, b"{\"batch\": 5}".to_vec()).await;
    assert_error(&(got.0, got.1), 400, "invalid_batch");

    let got = post(&keel, "/v1/track", Some(WRITE_KEY), json!({"event": "E"})).await;
    assert_error(&got, 400, "missing_identity");
    let got = post(
        &keel,
        "/v1/batch",
        Some(WRITE_KEY),
        json!({"batch": [
            {"type": "track", "userId": "u", "event": "E"},
            {"type": "track", "userId": "", "anonymousId": null, "event": "E"}
        ]}),
    )
    .await;
    assert_error(&got, 400, "missing_identity");
    assert_eq!(got.1["index"], 1);
    assert!(got.1["error"].as_str().expect("msg").contains("event 1"));

    let got = post(&keel, "/v1/batch", Some(WRITE_KEY), json!({"batch": [
        {"type": "identify", "userId": "u"}, {"type": "identify", "userId": "u"}, {"type": "purchase", "userId": "u"}
    ]})).await;
    assert_error(&got, 400, "invalid_type");
    assert_eq!(got.1["index"], 2);
    let got = post(
        &keel,
        "/v1/batch",
        Some(WRITE_KEY),
        json!({"batch": [{"userId": "u"}]}),
    )
    .await;
    assert_error(&got, 400, "invalid_type");
    let got = post(&keel, "/v1/track", Some(WRITE_KEY), json!({"userId": "u"})).await;
    assert_error(&got, 400, "missing_field");
    let got = post(
        &keel,
        "/v1/track",
        Some(WRITE_KEY),
        json!({"userId": "u", "event": "E", "sentAt": "soon"}),
    )
    .await;
    assert_error(&got, 400, "invalid_timestamp");
    let got = post(&keel, "/v1/batch", Some(WRITE_KEY), json!({"batch": []})).await;
    assert_error(&got, 400, "empty_batch");

    let got = post_raw(
        &keel,
        "/v1/track",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/xml"),
        ],
        b"<e/>".to_vec(),
    )
    .await;
    assert_error(&(got.0, got.1), 415, "unsupported_media_type");
    let got = post_raw(
        &keel,
        "/v1/track",
        &[("Authorization", &auth), ("Content-Encoding", "br")],
        b"{}".to_vec(),
    )
    .await;
    assert_error(&(got.0, got.1), 415, "unsupported_encoding");
    let got = post_raw(
        &keel,
        "/v1/track",
        &[("Authorization", &auth), ("Content-Encoding", "gzip")],
        b"not gzip".to_vec(),
    )
    .await;
    assert_error(&(got.0, got.1), 400, "invalid_gzip");
    // text/plain is accepted: browsers' sendBeacon cannot send application/json.
    let got = post_raw(
        &keel,
        "/v1/track",
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        json!({"userId": "u", "event": "Beacon"})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(job_count(&db).await, 1, "only the valid request was stored");
}

#[tokio::test]
async fn enforces_size_caps_with_413_including_gzip_bombs() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    let auth = basic(WRITE_KEY);
    let big = "x".repeat(33 * 1024);
    let got = post(
        &keel,
        "/v1/track",
        Some(WRITE_KEY),
        json!({"userId": "u", "event": "E", "properties": {"blob": big}}),
    )
    .await;
    assert_error(&got, 413, "payload_too_large");
    let got = post(
        &keel,
        "/v1/batch",
        Some(WRITE_KEY),
        json!({"batch": [
            {"type": "track", "userId": "u", "event": "ok"},
            {"type": "track", "userId": "u", "event": "E", "properties": {"blob": big}}
        ]}),
    )
    .await;
    assert_error(&got, 413, "payload_too_large");
    assert_eq!(got.1["index"], 1);
    // 20 events of 30 KB each: every event fits, the request (600 KB) does not.
    let event = json!({"type": "track", "userId": "u", "event": "E", "properties": {"blob": "y".repeat(30 * 1024)}});
    let got = post(
        &keel,
        "/v1/batch",
        Some(WRITE_KEY),
        json!({"batch": vec![event; 20]}),
    )
    .await;
    assert_error(&got, 413, "payload_too_large");
    // A 10 MB gzip bomb (~10 KB on the wire) is refused without inflating it all.
    let mut bomb_json =
        br#"{"batch":[{"type":"track","userId":"u","event":"E","properties":{"p":""#.to_vec();
    bomb_json.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
    bomb_json.extend(br#""}}]}"#);
    let bomb = gzip(&bomb_json);
    assert!(bomb.len() < 100 * 1024);
    let got = post_raw(
        &keel,
        "/v1/batch",
        &[("Authorization", &auth), ("Content-Encoding", "gzip")],
        bomb,
    )
    .await;
    assert_error(&(got.0, got.1), 413, "payload_too_large");
    assert_eq!(job_count(&db).await, 0);
}

#[tokio::test]
async fn deduplicates_message_ids_in_the_window_table() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    for _ in 0..2 {
        let got = post(
            &keel,
            "/v1/track",
            Some(WRITE_KEY),
            json!({"userId": "u", "event": "E", "messageId": "same"}),
        )
        .await;
        assert_eq!(got.0, 200);
    }
    assert_eq!(
        job_count(&db).await,
        2,
        "both requests are stored (the processor drops the repeat)"
    );
    let rows = db
        .client()
        .await
        .query(
            "SELECT d.job_id, (SELECT min(id) FROM gw_jobs) FROM dedup d WHERE key = $1::text::uuid",
            &[&keel_actors::store::dedup_key(SOURCE_ID, "same").to_string()],
        )
        .await
        .expect("dedup");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].get::<_, i64>(0),
        rows[0].get::<_, i64>(1),
        "first job owns the messageId"
    );
    // The decision is stored with each row: the repeat's row lists the messageId's key.
    let rows = db
        .client()
        .await
        .query(
            "SELECT cardinality(duplicates), duplicates[1] = (SELECT key FROM dedup) \
             FROM gw_jobs ORDER BY id",
            &[],
        )
        .await
        .expect("gw_jobs");
    let got: Vec<(i32, Option<bool>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![(0, None), (1, Some(true))],
        "first row: no duplicates; second: the repeated key"
    );
    // A messageId twice in one request also sends the flush to the duplicate-aware
    // statement; a request without repeats after it takes the plain insert again.
    let got = post(
        &keel,
        "/v1/batch",
        Some(WRITE_KEY),
        json!({"batch": [
            {"type": "track", "userId": "u", "event": "E", "messageId": "twice"},
            {"type": "track", "userId": "u", "event": "E", "messageId": "twice"},
            {"type": "track", "userId": "u", "event": "E", "messageId": "fresh"},
        ]}),
    )
    .await;
    assert_eq!(got.0, 200);
    let got = post(
        &keel,
        "/v1/track",
        Some(WRITE_KEY),
        json!({"userId": "u", "event": "E", "messageId": "later"}),
    )
    .await;
    assert_eq!(got.0, 200);
    assert_eq!(job_count(&db).await, 4);
    let keys: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM dedup", &[])
        .await
        .expect("dedup")
        .get(0);
    assert_eq!(keys, 4, "same, twice, fresh and later, once each");
    let metrics = keel.metrics().await;
    assert!(
        metrics.contains("keel_gateway_flush_duplicates_total 2\n"),
        "the repeat and the request with a repeat were redone, nothing else: {metrics}"
    );
}

#[tokio::test]
async fn answers_503_when_postgres_is_down_and_429_when_the_queue_is_full() {
    let db = TestDb::create().await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut opts = KeelOptions::new(&db)
        .env("KEEL_DATABASE__TIMEOUT_SECS", "1")
        .env("KEEL_GATEWAY__MAX_REQUEST_BYTES", "4096")
        .env("KEEL_GATEWAY__MAX_EVENT_BYTES", "4096")
        .env("KEEL_GATEWAY__QUEUE_BYTES", "4096");
    opts.database_url = Some(db.url_via(&proxy.addr));
    let keel = Keel::start(opts).await;
    let event = json!({"userId": "u", "event": "E"});
    assert_eq!(
        post(&keel, "/v1/track", Some(WRITE_KEY), event.clone())
            .await
            .0,
        200
    );

    proxy.set(Mode::Refuse);
    let res = http()
        .post(keel.url("/v1/track"))
        .header("Authorization", basic(WRITE_KEY))
        .json(&event)
        .send()
        .await
        .expect("req");
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(
        res.headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["code"], "storage_unavailable");
    assert_eq!(
        http()
            .get(keel.url("/ready"))
            .send()
            .await
            .expect("ready")
            .status()
            .as_u16(),
        503
    );

    // Unresponsive database: the first request holds the whole queue budget, the next is 429.
    proxy.set(Mode::Pass);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    proxy.set(Mode::Hang);
    let blob = json!({"userId": "u", "event": "E", "properties": {"p": "z".repeat(3500)}});
    let k = keel.url("/v1/track");
    let first = tokio::spawn({
        let blob = blob.clone();
        async move {
            http()
                .post(k)
                .header("Authorization", basic(WRITE_KEY))
                .json(&blob)
                .send()
                .await
                .expect("req")
                .status()
                .as_u16()
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let res = http()
        .post(keel.url("/v1/track"))
        .header("Authorization", basic(WRITE_KEY))
        .json(&blob)
        .send()
        .await
        .expect("req");
    assert_eq!(res.status().as_u16(), 429);
    assert!(res.headers().contains_key("Retry-After"));
    assert_eq!(
        res.json::<Value>().await.expect("json")["code"],
        "queue_full"
    );
    assert_eq!(
        first.await.expect("join"),
        503,
        "a hung database times out into 503, never 200"
    );

    proxy.set(Mode::Pass);
    let mut ok = false;
    for _ in 0..50 {
        if post(&keel, "/v1/track", Some(WRITE_KEY), event.clone())
            .await
            .0
            == 200
        {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(ok, "recovers when Postgres is back");
    let stored = stored_events(&db).await;
    let (blobs, small): (Vec<&Value>, Vec<&Value>) = stored
        .iter()
        .partition(|e| e["properties"]["p"].is_string());
    assert_eq!(
        small.len(),
        2,
        "the acknowledged events are stored, the refused one is not"
    );
    // The timed-out request was not acknowledged, but its statement had reached the
    // connection: it may commit once the database answers again (its 503 says so, and a
    // retry is dropped by messageId). The request refused with 429 never is.
    assert!(
        blobs.len() <= 1,
        "only the timed-out request may have been stored: {blobs:?}"
    );
}

#[tokio::test]
async fn health_ready_and_metrics_report_traffic() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    assert_eq!(
        http()
            .get(keel.url("/health"))
            .send()
            .await
            .expect("health")
            .status()
            .as_u16(),
        200
    );
    let ready = http().get(keel.url("/ready")).send().await.expect("ready");
    assert_eq!(ready.status().as_u16(), 200);
    post(
        &keel,
        "/v1/track",
        Some(WRITE_KEY),
        json!({"userId": "u", "event": "E"}),
    )
    .await;
    post(
        &keel,
        "/v1/batch",
        Some(WRITE_KEY),
        json!({"batch": [{"type": "page", "userId": "u"}, {"type": "page", "userId": "u"}]}),
    )
    .await;
    post(
        &keel,
        "/v1/track",
        Some("bad"),
        json!({"userId": "u", "event": "E"}),
    )
    .await;
    let text = keel.metrics().await;
    for needle in [
        "keel_gateway_requests_total{endpoint=\"track\",outcome=\"200\",source=\"src_test\"} 1",
        "keel_gateway_requests_total{endpoint=\"track\",outcome=\"401\",source=\"none\"} 1",
        "keel_gateway_requests_total{endpoint=\"batch\",outcome=\"200\",source=\"src_test\"} 1",
        "keel_gateway_events_accepted_total{source=\"src_test\"} 3",
        "keel_gateway_commit_duration_seconds_bucket",
        "keel_gateway_flush_requests_bucket",
        "keel_gateway_queue_depth",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn answers_cors_preflight_for_browser_sdks() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    let res = http()
        .request(reqwest::Method::OPTIONS, keel.url("/v1/batch"))
        .header("Origin", "https://shop.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    assert!(res.status().is_success(), "{}", res.status());
    assert!(res.headers().contains_key("access-control-allow-origin"));
}
