//! Criterion benchmark of the gateway's pure part: a `/v1/batch` body of 100 events read,
//! validated and normalised (`parse_request`), then encoded as the JSON array Keel stores.
//! Two event shapes: `loadgen` (the ~300-byte events of benches/loadgen) and `browser` (a
//! ~1.2 kB track event as analytics.js sends it, with page, userAgent and traits in
//! `context`). `cargo bench --bench ingest` prints events/s for both.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keel::http::normalize::RequestInfo;
use keel::http::parse::{parse_request, Endpoint, Limits};

/// The allocator the `keel` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: usize = 100;

fn loadgen_event(i: usize) -> String {
    format!(
        r#"{{"type":"track","event":"Order Completed","userId":"user-{u}","messageId":"m-{i}","context":{{"library":{{"name":"loadgen","version":"0.1"}}}},"originalTimestamp":"2026-12-07T10:00:00.000Z","sentAt":"2026-12-07T10:00:00.000Z","properties":{{"revenue":{i}.25,"currency":"EUR","sku":"sku-{i}","quantity":2}}}}"#,
        u = i % 17
    )
}

fn browser_event(i: usize) -> String {
    format!(
        r#"{{"type":"track","event":"Product Viewed","anonymousId":"4f1c2d3e-5a6b-4c7d-8e9f-{i:012}","userId":"user-{u}","messageId":"ajs-next-{i}-1733565600000","timestamp":"2026-12-07T10:00:00.123Z","sentAt":"2026-12-07T10:00:00.456Z","integrations":{{}},"properties":{{"product_id":"507f1f77bcf86cd799439011","sku":"G-32","category":"Games","name":"Monopoly: 3rd Edition","brand":"Hasbro","variant":"200 pieces","price":18.99,"quantity":1,"coupon":"MAYDEALS","currency":"usd","position":3,"value":18.99,"url":"https://www.example.com/product/path","image_url":"https://www.example.com/product/path.jpg"}},"context":{{"library":{{"name":"analytics.js","version":"next-1.70.0"}},"page":{{"path":"/academy/","referrer":"https://www.google.com/","search":"?utm_source=news","title":"Analytics Academy","url":"https://segment.com/academy/"}},"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36","userAgentData":{{"brands":[{{"brand":"Chromium","version":"131"}},{{"brand":"Not_A Brand","version":"24"}}],"mobile":false,"platform":"Linux"}},"locale":"en-US","timezone":"Europe/Berlin","screen":{{"width":1920,"height":1080,"density":1}},"traits":{{"email":"peter@example.com","plan":"premium","logins":5}},"campaign":{{"name":"TPS Innovation Newsletter","source":"Newsletter","medium":"email","term":"tps reports","content":"image link"}}}}}}"#,
        u = i % 17
    )
}

fn body(event: fn(usize) -> String) -> String {
    let events: Vec<String> = (0..EVENTS).map(event).collect();
    format!(
        r#"{{"batch":[{}],"sentAt":"2026-12-07T10:00:00.500Z"}}"#,
        events.join(",")
    )
}

fn bench(c: &mut Criterion) {
    let limits = Limits {
        max_event_bytes: 32 * 1024,
    };
    let request = RequestInfo::new(chrono::Utc::now(), Some("10.0.0.1".into()));
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (name, event) in [
        ("loadgen", loadgen_event as fn(usize) -> String),
        ("browser", browser_event),
    ] {
        let text = body(event);
        group.bench_function(format!("parse_normalize_encode_100_{name}_events"), |b| {
            b.iter(|| {
                let parsed =
                    parse_request(Endpoint::Batch, &text, &limits, &request).expect("valid");
                let stored = serde_json::to_string(&parsed.events).expect("encode");
                assert!(stored.len() > text.len() / 2);
                stored.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
