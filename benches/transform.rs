//! Criterion benchmark of one V8 isolate running a realistic user transformation (JSON in,
//! enrich, JSON out) over 100-event batches. `enrich_one_isolate_100_event_batches` is the
//! way the processor calls it: Rust encodes the batch, the isolate parses it, runs
//! `transformEvent` per event, serialises the result, and Rust decodes that into maps.
//! `enrich_isolate_only_json_in_json_out` is the isolate's part alone (JSON text in, JSON
//! text out). `cargo bench --bench transform` prints events/s for both.

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The allocator the `keel` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use keel_actors::transform::{
    CallItem, CallResults, Libraries, Script, ScriptKind, TransformConfig, TransformPool,
};
use serde_json::{json, Map, Value};

const ENRICH: &str = r#"
const PLANS = { free: 0, pro: 1, team: 2, enterprise: 3 };
export function transformEvent(event, metadata) {
  const m = metadata(event);
  const p = event.properties || {};
  const email = (event.context?.traits?.email || "").toLowerCase();
  event.properties = {
    ...p,
    revenue_cents: Math.round((p.revenue || 0) * 100),
    sku_family: typeof p.sku === "string" ? p.sku.split("-")[0] : null,
    plan_rank: PLANS[p.plan] ?? -1,
    email_domain: email.includes("@") ? email.split("@")[1] : null,
    hour_utc: new Date(event.timestamp).getUTCHours(),
  };
  event.context = { ...event.context, keel: { source: m.sourceName, destination: m.destinationId } };
  if (event.event === "Internal Test") return null;
  return event;
}
"#;

fn events() -> Vec<Map<String, Value>> {
    (0..100)
        .map(|i| {
            let name = ["Order Completed", "Product Viewed", "Cart Updated"][i % 3];
            let v = json!({
                "type": "track", "event": name,
                "userId": format!("user-{}", i % 17), "anonymousId": format!("anon-{i}"),
                "messageId": format!("bench-{i}"), "timestamp": "2026-11-23T10:15:30.250Z",
                "receivedAt": "2026-11-23T10:15:31.000Z", "sentAt": "2026-11-23T10:15:30.900Z",
                "context": {"library": {"name": "analytics-python", "version": "2.3.2"},
                            "ip": "203.0.113.9", "traits": {"email": format!("User{i}@Example.com")},
                            "page": {"url": "https://shop.example.com/cart"}},
                "properties": {"revenue": 19.99 + i as f64, "currency": "EUR",
                               "sku": format!("sku-{}", i * 7), "quantity": i % 5 + 1, "plan": "pro"}
            });
            v.as_object().cloned().expect("object")
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let pool = TransformPool::start(TransformConfig {
        isolates: 1,
        ..TransformConfig::default()
    })
    .expect("pool");
    let script = Arc::new(Script::new(
        "enrich",
        Path::new("bench/enrich.js"),
        ENRICH.into(),
        ScriptKind::Transformation,
        Arc::new(Libraries::new()),
    ));
    let events = events();
    let common = json!({"sourceId": "src", "sourceName": "Web", "destinationId": "dst",
                        "destinationName": "Webhook", "destinationType": "WEBHOOK"});
    let metas: Vec<Value> = events
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"messageId": e["messageId"], "jobId": i}))
        .collect();
    let items: Vec<CallItem<'_>> = events
        .iter()
        .zip(&metas)
        .map(|(event, metadata)| CallItem { event, metadata })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Warm the isolate (compile) and check the output once.
    let out = rt
        .block_on(pool.call(&script, &common, &items, None))
        .expect("call");
    let CallResults::PerEvent(results) = out.results else {
        panic!("per-event results expected")
    };
    assert_eq!(results.len(), 100);
    let mut group = c.benchmark_group("transform");
    group.throughput(Throughput::Elements(items.len() as u64));
    group.bench_function("enrich_one_isolate_100_event_batches", |b| {
        b.iter(|| {
            rt.block_on(pool.call(&script, &common, &items, None))
                .expect("call")
        })
    });
    // The isolate alone: the batch's JSON made once, the answer left as JSON text.
    let input = serde_json::to_string(&json!({"common": common, "items": items})).expect("json");
    group.bench_function("enrich_isolate_only_json_in_json_out", |b| {
        b.iter(|| {
            rt.block_on(pool.call_json(&script, input.clone(), None))
                .expect("call")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
