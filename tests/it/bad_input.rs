//! Hostile and odd input at the gateway (what `gateway.rs` does not already cover): truncated
//! bodies and gzip, content types that cannot be JSON, invalid UTF-8, NUL characters,
//! 10,000-deep nesting, numbers beyond a double, 10,000 events in one batch, slowloris
//! clients and 5,000 idle connections. Each gets a clear 4xx JSON error or is stored intact,
//! and the server keeps answering everyone else throughout.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::sink::{Sink, SinkMode};
use crate::common::*;

async fn post_bytes(
    keel: &Keel,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = http()
        .post(keel.url(path))
        .header("Authorization", basic(WRITE_KEY))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn assert_4xx(got: &(u16, Value), status: u16, code: &str, what: &str) {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    assert_eq!(got.1["code"], code, "{what}: {}", got.1);
    assert!(
        got.1["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{what}: error message in {}",
        got.1
    );
}

/// The server still acknowledges a normal event.
async fn still_serving(keel: &Keel) {
    let got = post_bytes(
        keel,
        "/v1/track",
        &[("Content-Type", "application/json")],
        json!({"userId": "alive", "event": "Ping"})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(got.0, 200, "the server stopped serving: {}", got.1);
}

fn addr(keel: &Keel) -> String {
    keel.base.trim_start_matches("http://").to_owned()
}

/// Reads what the server sends until it closes (or `limit`); `None` if still open then.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let deadline = Instant::now() + limit;
    loop {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&buf).into_owned()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn malformed_bodies_get_a_clear_4xx_and_nothing_is_stored() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    let json_ct = [("Content-Type", "application/json")];
    let event = json!({"userId": "u", "event": "E"}).to_string();

    // A body shorter than its Content-Length, then the client goes away.
    let mut s = TcpStream::connect(addr(&keel)).await.expect("connect");
    let head = format!(
        "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"userId\":",
        basic(WRITE_KEY)
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.shutdown().await.expect("half-close");
    let answer = read_until_closed(&mut s, Duration::from_secs(15))
        .await
        .expect("the server closed the truncated request");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "truncated body: {answer}"
    );
    still_serving(&keel).await;

    // Truncated JSON and truncated gzip.
    let got = post_bytes(
        &keel,
        "/v1/batch",
        &json_ct,
        br#"{"batch":[{"type":"track","#.to_vec(),
    )
    .await;
    assert_4xx(&got, 400, "invalid_json", "truncated JSON");
    let zipped = gzip(
        json!({"batch": [{"type": "track", "userId": "u", "event": "E"}]})
            .to_string()
            .as_bytes(),
    );
    let got = post_bytes(
        &keel,
        "/v1/batch",
        &[("Content-Encoding", "gzip")],
        zipped[..zipped.len() / 2].to_vec(),
    )
    .await;
    assert_4xx(&got, 400, "invalid_gzip", "truncated gzip");
    let got = post_bytes(
        &keel,
        "/v1/batch",
        &[("Content-Encoding", "gzip")],
        gzip(b"\xff\xfe not json"),
    )
    .await;
    assert_4xx(&got, 400, "invalid_json", "gzip of invalid UTF-8");

    // Content types that cannot carry JSON.
    for ct in [
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "image/png",
        "text/html",
    ] {
        let got = post_bytes(
            &keel,
            "/v1/track",
            &[("Content-Type", ct)],
            event.clone().into_bytes(),
        )
        .await;
        assert_4xx(&got, 415, "unsupported_media_type", ct);
    }

    // Invalid UTF-8, bare and inside a string.
    let got = post_bytes(&keel, "/v1/track", &json_ct, b"\xc3\x28".to_vec()).await;
    assert_4xx(&got, 400, "invalid_json", "invalid UTF-8");
    let got = post_bytes(
        &keel,
        "/v1/track",
        &json_ct,
        b"{\"userId\":\"u\",\"event\":\"E\xff\xfe\"}".to_vec(),
    )
    .await;
    assert_4xx(&got, 400, "invalid_json", "invalid UTF-8 in a string");

    // 10,000-deep nesting, alone and in a batch; and just over Keel's own depth limit.
    let deep = format!(
        "{{\"userId\":\"u\",\"event\":\"E\",\"properties\":{}1{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let got = post_bytes(&keel, "/v1/track", &json_ct, deep.clone().into_bytes()).await;
    // The depth is measured without recursion, so the answer names the limit.
    assert_4xx(&got, 400, "nesting_too_deep", "10,000-deep event");
    let deep_batch = format!(
        "{{\"batch\":[{}]}}",
        deep.replacen('{', "{\"type\":\"track\",", 1)
    );
    let got = post_bytes(&keel, "/v1/batch", &json_ct, deep_batch.into_bytes()).await;
    assert_eq!(got.0, 400, "10,000-deep batch: {}", got.1);
    assert!(got.1["code"].as_str().is_some(), "{}", got.1);
    let mut nested = json!("leaf");
    for _ in 0..70 {
        nested = json!({ "n": nested });
    }
    let got = post_bytes(
        &keel,
        "/v1/track",
        &json_ct,
        json!({"userId": "u", "event": "E", "properties": nested})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_4xx(&got, 400, "nesting_too_deep", "70 levels");

    // Beyond a double: refused, naming the problem.
    let got = post_bytes(
        &keel,
        "/v1/track",
        &json_ct,
        br#"{"userId":"u","event":"E","properties":{"n":1e400}}"#.to_vec(),
    )
    .await;
    assert_4xx(&got, 400, "invalid_json", "1e400");
    assert!(
        got.1["error"]
            .as_str()
            .unwrap_or("")
            .contains("number out of range"),
        "{}",
        got.1
    );

    // A 40 KB event (the cap is 32 KB).
    let big = json!({"userId": "u", "event": "E", "properties": {"blob": "z".repeat(40 * 1024)}});
    let got = post_bytes(&keel, "/v1/track", &json_ct, big.to_string().into_bytes()).await;
    assert_4xx(&got, 413, "payload_too_large", "40 KB event");

    // NUL in an id: refused (ids live in text columns that cannot hold it).
    let got = post_bytes(
        &keel,
        "/v1/track",
        &json_ct,
        br#"{"userId":"a\u0000b","event":"E"}"#.to_vec(),
    )
    .await;
    assert_4xx(&got, 400, "invalid_field", "NUL in userId");
    assert!(
        got.1["error"].as_str().unwrap_or("").contains("NUL"),
        "{}",
        got.1
    );
    let got = post_bytes(
        &keel,
        "/v1/batch",
        &json_ct,
        br#"{"batch":[{"type":"track","userId":"u","event":"E","messageId":"m\u0000"}]}"#.to_vec(),
    )
    .await;
    assert_4xx(&got, 400, "invalid_field", "NUL in messageId");

    still_serving(&keel).await;
    assert_eq!(
        job_count(&db).await,
        2,
        "only the two liveness events were stored"
    );
}

#[tokio::test]
async fn nul_characters_big_numbers_and_deep_events_are_stored_and_delivered_intact() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = workspace_with_webhooks(&[("hook", &sink.url, json!({}))]);
    let keel = Keel::start(opts).await;
    let mut nested = json!("leaf");
    for _ in 0..60 {
        nested = json!({ "n": nested });
    }
    // Raw text: NUL in a property value and a key, a 30-digit integer, a deep object.
    let body = format!(
        r#"{{"batch":[
            {{"type":"track","userId":"u","event":"E","messageId":"nul","properties":{{"s":"a\u0000b","k\u0000":1}},"context":{{"note":"\u0000"}}}},
            {{"type":"track","userId":"u","event":"E","messageId":"big","properties":{{"n":123456789012345678901234567890,"m":-9223372036854775808,"u":18446744073709551615}}}},
            {{"type":"track","userId":"u","event":"E","messageId":"deep","properties":{nested}}}
        ]}}"#
    );
    let got = post_bytes(
        &keel,
        "/v1/batch",
        &[("Content-Type", "application/json")],
        body.into_bytes(),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(
        sink.wait_delivered(3, Duration::from_secs(30)).await,
        3,
        "log:\n{}",
        keel.log_text()
    );
    let delivered = sink.delivered();
    let by_id = |id: &str| {
        delivered
            .iter()
            .find(|b| b["messageId"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not delivered"))
    };
    let nul = by_id("nul");
    assert_eq!(nul["properties"]["s"], "a\u{0}b");
    assert_eq!(nul["properties"]["k\u{0}"], 1);
    assert_eq!(nul["context"]["note"], "\u{0}");
    let big = by_id("big");
    // Integers within 64 bits stay exact; larger ones become the nearest double, as in
    // JavaScript (documented in docs/api.md, "Odd values").
    assert_eq!(big["properties"]["m"], json!(i64::MIN));
    assert_eq!(big["properties"]["u"], json!(u64::MAX));
    assert_eq!(big["properties"]["n"].as_f64(), Some(1.2345678901234568e29));
    assert_eq!(by_id("deep")["properties"], nested);
    // And the pipeline keeps going.
    post_batch(
        &http(),
        &keel.url("/v1/batch"),
        &[json!({"type": "track", "userId": "u", "event": "After", "messageId": "after"})],
    )
    .await;
    assert_eq!(sink.wait_delivered(4, Duration::from_secs(30)).await, 4);
}

#[tokio::test]
async fn ten_thousand_events_in_one_batch_are_stored() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    let batch: Vec<Value> = (0..10_000)
        .map(|i| json!({"type": "page", "userId": i}))
        .collect();
    let body = json!({ "batch": batch }).to_string();
    assert!(
        body.len() < 500 * 1024,
        "fits the request cap: {}",
        body.len()
    );
    let got = post_bytes(
        &keel,
        "/v1/batch",
        &[("Content-Type", "application/json")],
        body.into_bytes(),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    let stored = stored_events(&db).await;
    assert_eq!(stored.len(), 10_000);
    // Rows are per partition, so look the last one up rather than index it.
    assert!(
        stored.iter().all(|e| e["userId"].is_string()),
        "numeric ids become strings"
    );
    assert!(stored.iter().any(|e| e["userId"] == "9999"));
}

#[tokio::test]
async fn slow_clients_are_cut_off_by_the_read_timeout() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db).env("KEEL_SERVER__READ_TIMEOUT_SECS", "2")).await;
    let addr = addr(&keel);

    // Slowloris on the head: one byte per second, never finishing.
    let head_task = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut s = TcpStream::connect(&addr).await.expect("connect");
            let started = Instant::now();
            for b in
                b"POST /v1/track HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa".iter()
            {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                if started.elapsed() > Duration::from_secs(8) {
                    break;
                }
            }
            let rest = read_until_closed(&mut s, Duration::from_secs(5)).await;
            (started.elapsed(), rest)
        }
    });
    // Slowloris on the body: the head at once, then one byte per second.
    let body_task = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut s = TcpStream::connect(&addr).await.expect("connect");
            let head = format!(
                "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
                basic(WRITE_KEY)
            );
            s.write_all(head.as_bytes()).await.expect("head");
            let started = Instant::now();
            let mut answer = String::new();
            for b in b"{\"userId\":\"slow\",\"event\":\"E\"".iter() {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                let mut buf = [0u8; 4096];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
                {
                    answer.push_str(&String::from_utf8_lossy(&buf[..n]));
                    break;
                }
            }
            (started.elapsed(), answer)
        }
    });
    // Meanwhile everyone else is served.
    for _ in 0..3 {
        still_serving(&keel).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (head_time, head_rest) = head_task.await.expect("head task");
    assert!(
        head_time < Duration::from_secs(6) && head_rest.is_some(),
        "a client trickling its head was not cut off in time: {head_time:?} {head_rest:?}"
    );
    let (body_time, answer) = body_task.await.expect("body task");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a client trickling its body got: {answer:?} after {body_time:?}"
    );
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(body_time < Duration::from_secs(5), "{body_time:?}");
    assert_eq!(
        job_count(&db).await,
        3,
        "only the liveness events were stored"
    );
}

#[tokio::test]
async fn five_thousand_idle_connections_do_not_stop_other_clients() {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db).env("KEEL_SERVER__READ_TIMEOUT_SECS", "3")).await;
    let addr = addr(&keel);
    let mut idle = Vec::with_capacity(5_000);
    for i in 0..5_000 {
        match TcpStream::connect(&addr).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connection {i} refused: {e} (open-file limit?)"),
        }
    }
    let started = Instant::now();
    still_serving(&keel).await;
    let first = started.elapsed();
    assert!(
        first < Duration::from_secs(2),
        "answer took {first:?} beside 5,000 idle connections"
    );
    let health = http()
        .get(keel.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200);
    // The idle ones are closed by the server once the read timeout passes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut closed = 0;
    for s in idle.iter_mut().take(200) {
        if read_until_closed(s, Duration::from_millis(50))
            .await
            .is_some()
        {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 200,
        "idle connections left open past the read timeout"
    );
    drop(idle);
    still_serving(&keel).await;
}
