//! Object storage end to end, against moto's S3 server started by each test: the `S3` and
//! `MINIO` destinations write gzip JSON lines per source and hour (listed and read back
//! byte for byte); an S3 outage under load leaves no partial, missing or doubled object;
//! `S3_DATALAKE` writes Parquet tables that DuckDB reads back, with schema evolution and
//! discards; the raw backup keeps ingest at full speed through a store outage and catches up
//! without gaps; `keel replay` sends a backup through another workspace in order, and its
//! dry run prints the same thing twice.
//!
//! moto keeps objects in memory, so a "stopped" store is a TCP proxy that drops every
//! connection and refuses new ones (`Mode::Refuse`), as a crashed server would look.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::proxy::{Mode, Proxy};
use crate::common::sink::{Sink, SinkMode};
use crate::common::storage::{duckdb, gunzip_lines, objects, Moto};
use crate::common::*;

fn s3_dest(id: &str, kind: &str, config: Value) -> Value {
    json!({"id": id, "name": id, "enabled": true, "config": config,
           "destinationDefinition": {"name": kind}})
}

fn ws(dests: Vec<Value>) -> Value {
    json!({"sources": [{"id": SOURCE_ID, "name": "Test", "writeKey": WRITE_KEY, "enabled": true,
                        "destinations": dests}]})
}

fn options(db: &TestDb, workspace: Value) -> KeelOptions {
    let mut opts = fast_router(KeelOptions::new(db));
    opts.workspace = workspace;
    opts.env("KEEL_WAREHOUSE__RETRY_BASE_MS", "200")
        .env("KEEL_WAREHOUSE__RETRY_MAX_BACKOFF_MS", "1000")
        .env("KEEL_ROUTER__TIMEOUT_SECS", "3")
        .env("KEEL_ROUTER__CONNECT_TIMEOUT_SECS", "1")
}

fn tracks(prefix: &str, users: usize, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"type": "track", "userId": format!("{prefix}-u{}", i % users), "event": "Clicked",
                   "messageId": format!("{prefix}-{i}"), "properties": {"i": i}})
        })
        .collect()
}

/// The value of the sample `series` (labels as rendered) in a metrics text.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Every line of every `.json.gz` object under `prefix`, with the object name.
async fn jsonl(
    store: &dyn keel_actors::object_store::ObjectStore,
    prefix: &str,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (path, bytes) in objects(store, prefix).await {
        if !path.ends_with(".json.gz") {
            continue;
        }
        for l in gunzip_lines(&bytes) {
            out.push((path.clone(), serde_json::from_str(&l).expect("json line")));
        }
    }
    out
}

async fn wait_lines(
    store: &dyn keel_actors::object_store::ObjectStore,
    prefix: &str,
    n: usize,
    timeout: Duration,
) -> Vec<(String, Value)> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = jsonl(store, prefix).await;
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `<first>-<last>` of an object name.
fn range_of(path: &str) -> (i64, i64) {
    let file = path.rsplit('/').next().expect("file");
    let stem = file.split('.').next().expect("stem");
    let (a, b) = stem.split_once('-').expect("range");
    (a.parse().expect("first"), b.parse().expect("last"))
}

#[tokio::test]
async fn s3_and_minio_write_gzip_json_lines_per_source_and_hour_read_back_byte_for_byte() {
    let moto = Moto::start().await;
    moto.create_bucket("lake").await;
    let db = TestDb::create().await;
    let port = moto.port;
    let keel = Keel::start(options(
        &db,
        ws(vec![
            s3_dest("s3", "S3", json!({"bucketName": "lake", "prefix": "/events/", "endPoint": moto.endpoint,
                "region": "us-east-1", "accessKeyID": "test", "accessKey": "test",
                "uploadInterval": 1, "maxBatchRows": 100})),
            s3_dest("minio", "MINIO", json!({"bucketName": "lake", "prefix": "minio", "endPoint": format!("127.0.0.1:{port}"),
                "useSSL": false, "accessKeyID": "test", "secretAccessKey": "test", "uploadInterval": "1"})),
        ]),
    ))
    .await;
    let sent = tracks("obj", 7, 250);
    send_batches(&keel, &sent, 25).await;
    let store = Moto::store(&moto.endpoint, "lake");
    let lines = wait_lines(store.as_ref(), "events", 250, Duration::from_secs(60)).await;
    assert_eq!(lines.len(), 250, "log:\n{}", keel.log_text());
    let minio = wait_lines(store.as_ref(), "minio", 250, Duration::from_secs(30)).await;
    assert_eq!(minio.len(), 250);

    // Names: <prefix>/<source>/<yyyy>/<mm>/<dd>/<hh>/<first>-<last>.json.gz, ranges disjoint.
    let now = chrono::Utc::now();
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for (path, _) in &lines {
        let parts: Vec<&str> = path.split('/').collect();
        assert_eq!(parts.len(), 7, "{path}");
        assert_eq!((parts[0], parts[1]), ("events", SOURCE_ID), "{path}");
        assert_eq!(parts[2], now.format("%Y").to_string(), "{path}");
        assert!(parts[6].ends_with(".json.gz"), "{path}");
        let r = range_of(path);
        if !ranges.contains(&r) {
            ranges.push(r);
        }
    }
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 < w[1].0, "overlapping batches {ranges:?}");
    }
    assert!(
        ranges.len() >= 3,
        "maxBatchRows 100 makes several objects: {ranges:?}"
    );

    // Every event once, as stored, each user's events in order.
    let mut seen = HashSet::new();
    let mut last_i: HashMap<String, i64> = HashMap::new();
    let mut by_range: BTreeMap<(i64, i64), Vec<&Value>> = BTreeMap::new();
    for (path, l) in &lines {
        by_range.entry(range_of(path)).or_default().push(l);
    }
    for l in by_range.values().flatten() {
        assert!(
            seen.insert(l["messageId"].as_str().expect("id").to_owned()),
            "{l}"
        );
        assert_eq!(l["type"], "track");
        assert!(
            l["receivedAt"].is_string() && l["context"].is_object(),
            "{l}"
        );
        let (u, i) = (
            l["userId"].as_str().expect("user").to_owned(),
            l["properties"]["i"].as_i64().expect("i"),
        );
        assert!(
            last_i.get(&u).is_none_or(|p| *p < i),
            "{u}: {i} after {:?}",
            last_i.get(&u)
        );
        last_i.insert(u, i);
    }
    let want: HashSet<String> = sent
        .iter()
        .map(|e| e["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, want);

    // Byte for byte: each object read whole equals the object read back in ranges, and the
    // store's ETag of a single PUT (the MD5 it computed of the bytes it received) matches.
    for (path, bytes) in objects(store.as_ref(), "events").await {
        let p = keel_actors::object_store::path::Path::from(path.as_str());
        let mut ranged = Vec::new();
        for start in (0..bytes.len()).step_by(1000) {
            let end = (start + 1000).min(bytes.len());
            ranged.extend_from_slice(
                &store
                    .get_range(&p, start as u64..end as u64)
                    .await
                    .expect("range"),
            );
        }
        assert_eq!(ranged, bytes, "{path}");
        let meta = store.head(&p).await.expect("head");
        let etag = meta.e_tag.expect("etag").trim_matches('"').to_owned();
        assert_eq!(etag, format!("{:032x}", md5_digest(&bytes)), "{path}");
    }
    let m = keel.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"keel_warehouse_events_loaded_total{destination="s3"}"#
        ),
        250.0,
        "{m}"
    );
    assert_eq!(db.count("SELECT count(*) FROM wh_jobs").await, 0);
    assert_eq!(db.count("SELECT count(*) FROM upload_batches").await, 0);
}

fn md5_digest(bytes: &[u8]) -> u128 {
    // A dependency-free MD5 would be long; the python in the storage venv has hashlib.
    let hex = std::process::Command::new(crate::common::storage::venv_bin("python"))
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.md5(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(bytes)?;
            c.wait_with_output()
        })
        .expect("md5");
    u128::from_str_radix(String::from_utf8_lossy(&hex.stdout).trim(), 16).expect("hex")
}

#[tokio::test]
async fn s3_outage_under_load_loses_nothing_and_leaves_no_partial_or_doubled_object() {
    let moto = Moto::start().await;
    moto.create_bucket("lake").await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", moto.port)).await;
    let db = TestDb::create().await;
    let keel = Keel::start(options(
        &db,
        ws(vec![s3_dest("s3", "S3", json!({"bucketName": "lake", "prefix": "out",
            "endPoint": format!("http://{}", proxy.addr), "accessKeyID": "test", "accessKey": "test",
            "uploadInterval": 0.3, "maxBatchRows": 60}))]),
    ))
    .await;
    let sent = tracks("out", 13, 1500);
    let k = keel.url("/v1/batch");
    let load = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let client = http();
            for chunk in sent.chunks(10) {
                post_batch(&client, &k, chunk).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set(Mode::Refuse); // the store goes away mid-upload
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set(Mode::Pass);
    load.await.expect("load");
    let store = Moto::store(&moto.endpoint, "lake");
    let lines = wait_lines(store.as_ref(), "out", 1500, Duration::from_secs(90)).await;
    let ids: Vec<String> = lines
        .iter()
        .map(|(_, l)| l["messageId"].as_str().expect("id").to_owned())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 1500, "lost events; log:\n{}", keel.log_text());
    assert_eq!(ids.len(), 1500, "doubled events");
    let mut ranges: Vec<(i64, i64)> = lines.iter().map(|(p, _)| range_of(p)).collect();
    ranges.sort();
    ranges.dedup();
    for w in ranges.windows(2) {
        assert!(w[0].1 < w[1].0, "two objects of one batch: {ranges:?}");
    }
    let m = keel.metrics().await;
    assert!(
        sample(
            &m,
            r#"keel_warehouse_batches_total{destination="s3",outcome="failed"}"#
        ) >= 1.0,
        "the outage was not noticed:\n{m}"
    );
    // No multipart upload was left open (all objects here are small single PUTs).
    let uploads = reqwest::get(format!("{}/lake?uploads", moto.endpoint))
        .await
        .expect("list uploads")
        .text()
        .await
        .unwrap_or_default();
    assert!(!uploads.contains("<UploadId>"), "{uploads}");
}

#[tokio::test]
async fn datalake_writes_parquet_tables_that_duckdb_reads_with_evolution_and_discards() {
    let moto = Moto::start().await;
    moto.create_bucket("lakehouse").await;
    let db = TestDb::create().await;
    let keel = Keel::start(options(
        &db,
        ws(vec![s3_dest("lake", "S3_DATALAKE", json!({"bucketName": "lakehouse", "prefix": "lake",
            "endPoint": moto.endpoint, "accessKeyID": "test", "accessKey": "test", "uploadInterval": 1}))]),
    ))
    .await;
    let order = |id: &str, props: Value| {
        json!({"type": "track", "userId": "u1", "event": "Order Completed",
        "messageId": id, "properties": props, "context": {"library": {"name": "analytics-python"}}})
    };
    send_batches(
        &keel,
        &[
            order("o1", json!({"revenue": 4.5, "currency": "EUR"})),
            order("o2", json!({"revenue": 10.25, "currency": "USD"})),
            json!({"type": "identify", "userId": "u1", "messageId": "i1", "traits": {"email": "a@b.c", "plan": "free"}}),
            json!({"type": "page", "userId": "u1", "messageId": "p1", "name": "Home", "properties": {"url": "https://x.test/"}}),
            json!({"type": "screen", "userId": "u1", "messageId": "s1", "name": "Dash"}),
            json!({"type": "group", "userId": "u1", "messageId": "g1", "groupId": "acme", "traits": {"seats": 3}}),
            json!({"type": "alias", "userId": "u1", "messageId": "a1", "previousId": "anon"}),
        ],
        10,
    )
    .await;
    let store = Moto::store(&moto.endpoint, "lakehouse");
    let files = |all: Vec<(String, Vec<u8>)>, table: &str| -> usize {
        all.iter()
            .filter(|(p, _)| {
                p.starts_with(&format!("lake/keel_test/{table}/")) && p.ends_with(".parquet")
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while files(objects(store.as_ref(), "lake").await, "aliases") == 0 {
        assert!(
            Instant::now() < deadline,
            "no parquet files; log:\n{}",
            keel.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Second batch: a new column (coupon) and a value that does not fit (revenue text).
    send_batches(
        &keel,
        &[
            order("o3", json!({"revenue": 7, "coupon": "WINTER"})),
            order("o4", json!({"revenue": "lots"})),
            json!({"type": "identify", "userId": "u1", "messageId": "i2", "traits": {"plan": "pro"}}),
        ],
        10,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while files(objects(store.as_ref(), "lake").await, "order_completed") < 2 {
        assert!(
            Instant::now() < deadline,
            "no second file; log:\n{}",
            keel.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let dir = tempfile::tempdir().expect("dir");
    for (path, bytes) in objects(store.as_ref(), "lake").await {
        let p = dir.path().join(&path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }
    let base = dir.path().join("lake/keel_test").display().to_string();
    let out = duckdb(&format!(
        r#"
import duckdb, json
base = {base:?}
def rows(sql): return [list(r) for r in duckdb.sql(sql).fetchall()]
t = lambda name: f"read_parquet('{{base}}/{{name}}/*/*/*/*/*.parquet', union_by_name=true)"
out = {{}}
out["order"] = rows(f"select id, revenue, currency, coupon, context_library_name, event_text from {{t('order_completed')}} order by id")
out["types"] = {{r[0]: r[1] for r in rows(f"describe select * from {{t('order_completed')}}")}}
out["first_file_fields"] = [r[0] for r in rows(f"describe select * from read_parquet('{{base}}/order_completed/*/*/*/*/*.parquet') limit 0")]
for name in ["tracks", "identifies", "users", "pages", "screens", "groups", "aliases"]:
    out[name] = rows(f"select count(*) from {{t(name)}}")[0][0]
out["users_rows"] = rows(f"select id, plan, email from {{t('users')}} order by uuid_ts, plan")
out["discards"] = rows(f"select table_name, column_name, column_value, reason, row_id from {{t('keel_discards')}}")
out["page"] = rows(f"select name, url from {{t('pages')}}")
print(json.dumps(out, default=str))
"#
    ));
    let r: Value = serde_json::from_str(out.trim()).expect("duckdb json");
    assert_eq!(
        r["order"],
        json!([
            [
                "o1",
                4.5,
                "EUR",
                null,
                "analytics-python",
                "Order Completed"
            ],
            [
                "o2",
                10.25,
                "USD",
                null,
                "analytics-python",
                "Order Completed"
            ],
            [
                "o3",
                7.0,
                null,
                "WINTER",
                "analytics-python",
                "Order Completed"
            ],
            [
                "o4",
                null,
                null,
                null,
                "analytics-python",
                "Order Completed"
            ]
        ]),
        "{r}"
    );
    assert_eq!(r["types"]["revenue"], "DOUBLE");
    assert_eq!(r["types"]["currency"], "VARCHAR");
    assert_eq!(r["types"]["received_at"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(r["types"]["id"], "VARCHAR");
    assert_eq!(r["tracks"], 4);
    for t in ["pages", "screens", "groups", "aliases"] {
        assert_eq!(r[t], 1, "{t}: {r}");
    }
    assert_eq!(r["identifies"], 2);
    assert_eq!(r["users_rows"][1], json!(["u1", "pro", null]), "{r}");
    assert_eq!(r["page"], json!([["Home", "https://x.test/"]]));
    let d = &r["discards"][0];
    assert_eq!(
        (d[0].as_str(), d[1].as_str(), d[2].as_str(), d[4].as_str()),
        (
            Some("order_completed"),
            Some("revenue"),
            Some("lots"),
            Some("o4")
        ),
        "{r}"
    );
    assert!(
        d[3].as_str().unwrap_or("").contains("double precision"),
        "{r}"
    );
    let schema = objects(store.as_ref(), "lake/keel_test/_keel_schema").await;
    assert!(schema
        .iter()
        .any(|(p, b)| p.ends_with("order_completed.json")
            && String::from_utf8_lossy(b).contains("coupon")));
}

/// Starts Keel with the raw backup to `url` (`endpoint` for S3) and no destinations.
async fn keel_with_backup(db: &TestDb, url: &str, endpoint: &str) -> Keel {
    Keel::start(
        options(db, workspace())
            .env("KEEL_BACKUP__ENABLED", "true")
            .env("KEEL_BACKUP__URL", url)
            .env("KEEL_BACKUP__ENDPOINT", endpoint)
            .env("KEEL_BACKUP__ACCESS_KEY_ID", "test")
            .env("KEEL_BACKUP__SECRET_ACCESS_KEY", "test")
            .env("KEEL_BACKUP__REGION", "us-east-1")
            .env("KEEL_BACKUP__UPLOAD_INTERVAL_SECS", "0.5")
            .env("KEEL_BACKUP__MAX_BATCH_EVENTS", "500"),
    )
    .await
}

/// Sends `events` in batches of 10 over 8 connections; answers the seconds it took.
async fn ingest(keel: &Keel, events: &[Value]) -> f64 {
    let started = Instant::now();
    let url = keel.url("/v1/batch");
    let chunks: Vec<Vec<Value>> = events.chunks(10).map(<[Value]>::to_vec).collect();
    let per = chunks.len().div_ceil(8);
    let tasks: Vec<_> = chunks
        .chunks(per.max(1))
        .map(|part| {
            let (url, part) = (url.clone(), part.to_vec());
            tokio::spawn(async move {
                let client = http();
                for c in part {
                    post_batch(&client, &url, &c).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("ingest task");
    }
    started.elapsed().as_secs_f64()
}

#[tokio::test]
async fn raw_backup_outage_never_slows_ingest_and_catches_up_without_gaps() {
    let moto = Moto::start().await;
    moto.create_bucket("backup").await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", moto.port)).await;
    let db = TestDb::create().await;
    let keel = keel_with_backup(&db, "s3://backup/raw", &format!("http://{}", proxy.addr)).await;
    // Warm up, then the same load with the store up and with it down.
    ingest(&keel, &tracks("warm", 20, 500)).await;
    let healthy = ingest(&keel, &tracks("up", 20, 3000)).await;
    proxy.set(Mode::Refuse);
    let outage = ingest(&keel, &tracks("down", 20, 3000)).await;
    // The backlog gauges are sampled every 5 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (m, pending, failures) = loop {
        let m = keel.metrics().await;
        let pending = sample(&m, "keel_backup_pending_events");
        let failures = sample(&m, "keel_backup_failures_total");
        if (pending > 0.0 && failures >= 1.0) || Instant::now() > deadline {
            break (m, pending, failures);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("ingest of 3000 events: {healthy:.2}s store up, {outage:.2}s store down; pending {pending}, failures {failures}");
    assert!(
        outage <= healthy * 1.5 + 0.5,
        "ingest slowed by the backup outage: {outage:.2}s vs {healthy:.2}s"
    );
    assert!(pending > 0.0 && failures >= 1.0, "{m}");
    proxy.set(Mode::Pass);
    let store = Moto::store(&moto.endpoint, "backup");
    let deadline = Instant::now() + Duration::from_secs(90);
    let lines = loop {
        let lines = jsonl(store.as_ref(), "raw").await;
        let events: usize = lines
            .iter()
            .map(|(_, l)| l["events"].as_array().map_or(0, Vec::len))
            .sum();
        if events >= 6500 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut ids = HashSet::new();
    let mut request_ids = HashSet::new();
    for (path, l) in &lines {
        assert!(
            path.starts_with("raw/") && path.split('/').count() == 6,
            "{path}"
        );
        assert!(
            request_ids.insert(l["id"].as_i64().expect("id")),
            "request twice: {l}"
        );
        assert_eq!(l["sourceId"], SOURCE_ID);
        for e in l["events"].as_array().expect("events") {
            assert!(
                ids.insert(e["messageId"].as_str().expect("mid").to_owned()),
                "event twice: {e}"
            );
        }
    }
    assert_eq!(ids.len(), 6500, "log:\n{}", keel.log_text());
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.count("SELECT count(*) FROM backup_jobs").await > 0 {
        assert!(Instant::now() < deadline, "backup_jobs not emptied");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn replay(ws_path: &std::path::Path, endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = keel_command();
    // Keel refuses unknown KEEL_* variables; the test runner's own are not Keel's.
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("KEEL_")) {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg("replay")
        .arg("--workspace")
        .arg(ws_path)
        // The empty keel.toml Keel::start wrote beside the workspace.
        .arg("--config")
        .arg(ws_path.with_file_name("keel.toml"))
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .output()
        .expect("run keel replay");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn replay_sends_a_backup_through_another_workspace_in_order_and_dry_run_is_deterministic() {
    let moto = Moto::start().await;
    moto.create_bucket("bkp").await;
    let since = chrono::Utc::now() - chrono::Duration::minutes(1);
    let db = TestDb::create().await;
    let sent = tracks("rp", 10, 300);
    {
        let mut a = keel_with_backup(&db, "s3://bkp/raw", &moto.endpoint).await;
        send_batches(&a, &sent, 7).await;
        let store = Moto::store(&moto.endpoint, "bkp");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n: usize = jsonl(store.as_ref(), "raw")
                .await
                .iter()
                .map(|(_, l)| l["events"].as_array().map_or(0, Vec::len))
                .sum();
            if n >= 300 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "backup incomplete ({n}); log:\n{}",
                a.log_text()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        a.terminate();
    }
    let until = chrono::Utc::now() + chrono::Duration::minutes(1);
    // Another Keel (its own database) whose workspace has a webhook.
    let sink = Sink::start(SinkMode::Ok).await;
    let db2 = TestDb::create().await;
    let b = Keel::start(options(
        &db2,
        workspace_with_webhooks(&[("hook", &sink.url, json!({}))]),
    ))
    .await;
    let window = [
        "--from",
        "s3://bkp/raw",
        "--since",
        &since.to_rfc3339(),
        "--until",
        &until.to_rfc3339(),
    ];
    let dry: Vec<&str> = window
        .iter()
        .copied()
        .chain(["--dry-run", "--show"])
        .collect();
    let (ok1, out1, err1) = replay(&b.ws_path, &moto.endpoint, &dry);
    let (ok2, out2, _) = replay(&b.ws_path, &moto.endpoint, &dry);
    assert!(ok1 && ok2, "{err1}");
    assert_eq!(out1, out2, "dry runs differ");
    assert!(
        out1.contains("hook (WEBHOOK): 300 payloads, 0 dead-lettered"),
        "{out1}"
    );
    assert_eq!(
        out1.lines().filter(|l| l.starts_with("  {")).count(),
        300,
        "{out1}"
    );
    assert!(
        err1.contains("replay: objects"),
        "plain progress lines off a terminal: {err1}"
    );
    assert_eq!(sink.received().len(), 0, "a dry run delivers nothing");

    // B already saw these messageIds (they are in its dedup window): a replay is delivered
    // all the same, in each user's order.
    send_batches(&b, &sent, 7).await;
    assert_eq!(
        sink.wait_delivered(300, Duration::from_secs(60)).await,
        300,
        "log:\n{}",
        b.log_text()
    );
    let real: Vec<&str> = window
        .iter()
        .copied()
        .chain(["--destination", "hook", "--database-url", &db2.url])
        .collect();
    let (ok, out, err) = replay(&b.ws_path, &moto.endpoint, &real);
    assert!(ok, "{err}");
    assert!(out.contains("(300 events)"), "{out}");
    assert_eq!(
        sink.wait_delivered(600, Duration::from_secs(60)).await,
        600,
        "log:\n{}",
        b.log_text()
    );
    let got = sink.delivered();
    let replayed = &got[300..];
    let ids: HashSet<&str> = replayed
        .iter()
        .filter_map(|e| e["messageId"].as_str())
        .collect();
    assert_eq!(ids.len(), 300);
    let mut last: HashMap<&str, i64> = HashMap::new();
    for e in replayed {
        let (u, i) = (
            e["userId"].as_str().expect("user"),
            e["properties"]["i"].as_i64().expect("i"),
        );
        assert!(
            last.get(u).is_none_or(|p| *p < i),
            "{u}: {i} after {:?}",
            last.get(u)
        );
        last.insert(u, i);
    }
}

/// `backup_jobs` rows are not inserted in id order (a request that committed late is
/// consumed, and packed, after higher ids): one that arrives while a batch is uploading
/// must wait for the next batch, not be deleted with the batch unwritten.
#[tokio::test]
async fn a_backup_row_with_a_lower_id_that_arrives_during_an_upload_waits_for_the_next_batch() {
    use keel_actors::store::{run_migrations, JobQueue, PoolConfig, Store};
    let db = TestDb::create().await;
    run_migrations(&db.url).await.expect("migrations");
    let store = Store::connect(&db.url, &PoolConfig::default()).expect("store");
    let client = db.client().await;
    let insert = |id: i64| {
        format!(
            "INSERT INTO backup_jobs (id, source_id, received_at, partition, event_count, lines_gz) \
             VALUES ({id}, '', now(), -1, 1, '\\x00')"
        )
    };
    client
        .batch_execute(&format!("{}; {}", insert(10), insert(20)))
        .await
        .expect("rows");
    let batch = store
        .claim_batch(&JobQueue::Backup, 1000)
        .await
        .expect("claim")
        .expect("a batch");
    let ids: Vec<i64> = batch.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, [10, 20]);
    // Uploading; meanwhile a late request's pack commits with a lower id.
    client.batch_execute(&insert(15)).await.expect("late row");
    store
        .confirm_batch(&JobQueue::Backup, &ids)
        .await
        .expect("confirm");
    let next = store
        .claim_batch(&JobQueue::Backup, 1000)
        .await
        .expect("claim")
        .expect("the late row");
    assert_eq!(next.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [15]);
    assert_eq!(next.jobs[0].lines_gz.as_deref(), Some(&[0u8][..]));
}
