//! The browser SDKs, unmodified, in headless Chromium against Keel: a page on another origin
//! bundles the RudderStack JS SDK v3 or Segment analytics.js 2.0 from npm, takes its settings
//! from Keel (`/sourceConfig`, `/v1/projects/{writeKey}/settings`), identifies, tracks,
//! pages, survives a reload, has one answer replaced by a 503 (the SDK's retry queue sends
//! the event again) and sends its last event with sendBeacon / a keepalive fetch as the page
//! is left. `tests/browser/setup.sh` installs Chromium and the npm packages;
//! `tests/browser/sdk.mjs` drives the browser and reports what went on the wire. Here: every
//! event reaches a webhook sink once, with the SDK's library, page, user agent and ids, in
//! the order each visitor sent them.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::sink::{Sink, SinkMode};
use crate::common::*;

/// The whole driver run (both visitors of one SDK) must finish within this.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(45);

fn setup_browser() {
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("tests/browser/setup.sh"))
        .output()
        .expect("run tests/browser/setup.sh");
    assert!(
        out.status.success(),
        "browser test installation failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the driver for `sdk` against `keel`; returns its summary (it asserted the pages saw
/// no console error and no request left for another host).
async fn drive(keel: &Keel, sdk: &str) -> Value {
    tokio::task::spawn_blocking(setup_browser)
        .await
        .expect("setup");
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("browser")
        .join(sdk);
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo_root().join("tests/browser/sdk.mjs"))
        .arg(&keel.base)
        .arg(WRITE_KEY)
        .arg(&out_dir)
        .env("KEEL_BROWSER_SDKS", sdk)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("start node tests/browser/sdk.mjs");
    let out = tokio::time::timeout(DRIVER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{sdk}: the browser driver took over {DRIVER_TIMEOUT:?} (log: {})",
                out_dir.join("browser.log").display()
            )
        })
        .expect("browser driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{sdk}: browser driver failed ({}):\n{}\n{stdout}\nbrowser log: {}\nkeel log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        out_dir.join("browser.log").display(),
        keel.log_text()
    );
    serde_json::from_str(stdout.lines().last().expect("summary line")).expect("summary JSON")
}

/// Waits until `done` holds for what the sink was delivered, or `timeout`.
async fn wait_for(sink: &Sink, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = sink.delivered();
        if done(&got) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `type` and the event's name (`event` for tracks, `name` for pages) with its `seq`.
fn label(e: &Value) -> String {
    let mut parts = vec![e["type"].as_str().unwrap_or("?").to_owned()];
    if let Some(name) = e["event"].as_str().or(e["name"].as_str()) {
        parts.push(name.to_owned());
    }
    if !e["properties"]["seq"].is_null() {
        parts.push(e["properties"]["seq"].to_string());
    }
    parts.join(" ")
}

async fn run(sdk: &str, library: &str, unload_api: &str, unload_path: &str) {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = workspace_with_webhooks(&[("hook", &sink.url, json!({}))]);
    let keel = Keel::start(opts).await;

    let summary = drive(&keel, sdk).await;
    let visitors = &summary["sdks"][sdk]["visitors"];
    let user = &visitors["user"];
    let anon = &visitors["anon"];
    let user_id = user["userId"].as_str().expect("userId");
    let user_anon = user["anonymousId"].as_str().expect("user's anonymousId");
    let anon_anon = anon["anonymousId"]
        .as_str()
        .expect("anonymous visitor's id");
    assert_ne!(user_anon, anon_anon, "two browser contexts, two visitors");

    // What each visitor sent, in order (the driver waited for each answer before the next
    // call; the unload event went last).
    let want_user = [
        "identify",
        "track Step Completed 1",
        "track Step Completed 2",
        "track Step Completed 3",
        "page Pricing \"page\"",
        "track Step Completed 4",
        "track Page Left 5",
    ];
    let want_anon = ["page Landing 1", "track Came Back 2"];
    let of = |events: &[Value], anon_id: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["anonymousId"] == anon_id)
            .cloned()
            .collect()
    };
    // Delivery is in order per user, so once the user's last event is in, a duplicate of
    // an earlier one (the retried seq 2) would be in as well.
    let delivered = wait_for(&sink, Duration::from_secs(30), |got| {
        of(got, user_anon).len() >= want_user.len() && of(got, anon_anon).len() >= want_anon.len()
    })
    .await;
    let got_user: Vec<String> = of(&delivered, user_anon).iter().map(label).collect();
    let got_anon: Vec<String> = of(&delivered, anon_anon).iter().map(label).collect();
    assert_eq!(
        got_user, want_user,
        "{sdk}: the identified visitor's events, in the order the sink got them\nsummary: {summary}\nkeel log:\n{}",
        keel.log_text()
    );
    assert_eq!(
        got_anon, want_anon,
        "{sdk}: the anonymous visitor's events, in order"
    );
    assert_eq!(
        delivered.len(),
        want_user.len() + want_anon.len(),
        "{sdk}: nothing else delivered: {delivered:#?}"
    );

    // Each messageId the driver saw on the wire arrived exactly once (the retried one too).
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for e in &delivered {
        *copies
            .entry(e["messageId"].as_str().expect("messageId"))
            .or_default() += 1;
    }
    for v in [user, anon] {
        for s in v["sent"].as_array().expect("sent") {
            let id = s["messageId"].as_str().expect("sent messageId");
            assert_eq!(copies.get(id), Some(&1), "{sdk}: {id} ({s}) delivered once");
        }
    }
    let retried = user["retry"]["messageId"].as_str().expect("retried id");
    assert!(
        user["retry"]["attempts"].as_u64() >= Some(2) && user["retry"]["stored"] == 200,
        "{sdk}: the SDK sent seq 2 again after Keel stored it and the browser saw 503: {}",
        user["retry"]
    );
    assert_eq!(copies.get(retried), Some(&1), "{sdk}: retried event once");

    for e in &delivered {
        let id = &e["messageId"];
        let ctx = &e["context"];
        assert_eq!(
            ctx["library"]["name"], library,
            "{sdk} {id}: context.library"
        );
        let page = &ctx["page"];
        for field in ["url", "path", "title"] {
            assert!(
                page[field].as_str().is_some_and(|s| !s.is_empty()),
                "{sdk} {id}: context.page.{field} in {ctx}"
            );
        }
        assert_eq!(page["path"], format!("/{sdk}.html"), "{sdk} {id}");
        assert!(
            page["url"]
                .as_str()
                .is_some_and(|u| u.starts_with(summary["pageOrigin"].as_str().unwrap_or("?"))),
            "{sdk} {id}: context.page.url is the test page: {page}"
        );
        assert!(
            page["title"]
                .as_str()
                .is_some_and(|t| t.starts_with(&format!("Keel {sdk} test"))),
            "{sdk} {id}: context.page.title: {page}"
        );
        assert!(
            ctx["userAgent"]
                .as_str()
                .is_some_and(|ua| ua.contains("Chrome")),
            "{sdk} {id}: context.userAgent: {}",
            ctx["userAgent"]
        );
        for field in ["receivedAt", "timestamp", "sentAt", "originalTimestamp"] {
            assert!(e[field].is_string(), "{sdk} {id}: {field}");
        }
    }
    // One anonymousId per visitor across the reload and the next page (checked by `of`
    // above: every expected event was found under it); the user is known after identify,
    // the anonymous visitor never.
    for e in of(&delivered, user_anon) {
        assert_eq!(e["userId"], user_id, "{sdk}: userId kept: {}", label(&e));
    }
    for e in of(&delivered, anon_anon) {
        assert!(
            e["userId"].is_null() || e["userId"] == "",
            "{sdk}: anonymous visitor has no userId: {e}"
        );
    }
    let identify = &of(&delivered, user_anon)[0];
    let traits = if identify["traits"].is_object() {
        &identify["traits"]
    } else {
        &identify["context"]["traits"]
    };
    assert_eq!(traits["plan"], "pro", "{sdk}: identify traits: {identify}");

    // The last event left with the page: sendBeacon / a keepalive fetch, while `pagehide`
    // ran, carrying a text/plain body, from the page that was being left.
    let unload = user["unload"].as_array().expect("unload transport");
    assert!(
        unload.iter().any(|t| t["api"] == unload_api
            && t["leaving"] == true
            && t["contentType"] == "text/plain"
            && t["url"]
                .as_str()
                .is_some_and(|u| u.starts_with(&keel.url(unload_path)))),
        "{sdk}: the unload event went by {unload_api} to {unload_path}: {unload:?}"
    );
    let left = of(&delivered, user_anon)
        .into_iter()
        .find(|e| e["event"] == "Page Left")
        .expect("unload event");
    assert!(
        left["context"]["page"]["search"]
            .as_str()
            .is_some_and(|s| s.contains("mode=unload")),
        "{sdk}: the unload event came from the page left: {}",
        left["context"]["page"]
    );
}

#[tokio::test]
async fn rudderstack_js_sdk_in_chromium_delivers_every_event_in_order() {
    run(
        "rudderstack",
        "RudderLabs JavaScript SDK",
        "sendBeacon",
        "/beacon/v1/batch?writeKey=",
    )
    .await;
}

#[tokio::test]
async fn segment_analytics_js_in_chromium_delivers_every_event_in_order() {
    run("segment", "analytics.js", "fetch", "/v1/b").await;
}
