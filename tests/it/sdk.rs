//! Unmodified Segment and RudderStack SDKs (Python and Node) send identify, track, page,
//! screen, group, alias and a burst of 1,000 tracks; every message must be stored exactly once with
//! the right fields. `tests/sdk/setup.sh` installs the pinned SDKs (idempotent, locked).

use std::collections::HashMap;
use std::process::Command;

use serde_json::Value;

use crate::common::*;

const BURST: usize = 1000;

fn setup_sdks() {
    let out = Command::new("bash")
        .arg(repo_root().join("tests/sdk/setup.sh"))
        .output()
        .expect("run tests/sdk/setup.sh");
    assert!(
        out.status.success(),
        "SDK installation failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends the scripted messages (plus `burst` tracks) to `keel` with a real SDK
/// (`language` = python | node, `sdk` = rudder | segment) and returns the sender's report
/// (`{"sent": [{messageId, type, userId, event}…], …}`), asserting the SDK saw no error.
pub async fn send_with_sdk(
    keel: &Keel,
    language: &str,
    sdk: &str,
    run_id: &str,
    burst: usize,
) -> Value {
    tokio::task::spawn_blocking(setup_sdks)
        .await
        .expect("setup");
    let root = repo_root();
    let mut cmd = match language {
        "python" => {
            let mut c = Command::new(root.join(".cache/sdk/venv/bin/python"));
            c.arg(root.join("tests/sdk/send_python.py"));
            c
        }
        _ => {
            let mut c = Command::new("node");
            c.arg(root.join("tests/sdk/send_node.mjs"));
            c
        }
    };
    cmd.args([
        "--sdk",
        sdk,
        "--host",
        &keel.base,
        "--write-key",
        WRITE_KEY,
        "--run-id",
        run_id,
    ])
    .args(["--burst", &burst.to_string()])
    .current_dir(std::env::temp_dir());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run sender");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{language}/{sdk} sender failed ({}):\n{}\n{stdout}\nkeel log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        keel.log_text()
    );
    serde_json::from_str(stdout.lines().last().expect("report line")).expect("report JSON")
}

async fn run_sdk(language: &str, sdk: &str, library: &str) {
    let db = TestDb::create().await;
    let keel = Keel::start(KeelOptions::new(&db)).await;
    let run_id = format!("{language}-{sdk}");
    let report = send_with_sdk(&keel, language, sdk, &run_id, BURST).await;
    let sent = report["sent"].as_array().expect("sent list");
    assert_eq!(sent.len(), BURST + 6);

    let stored = stored_events(&db).await;
    let mut by_id: HashMap<String, Vec<&Value>> = HashMap::new();
    for e in &stored {
        by_id
            .entry(e["messageId"].as_str().expect("messageId").to_owned())
            .or_default()
            .push(e);
    }
    assert_eq!(stored.len(), sent.len(), "nothing extra stored");
    for s in sent {
        let id = s["messageId"].as_str().expect("id");
        let copies = by_id.get(id).map_or(0, Vec::len);
        assert_eq!(copies, 1, "{id} stored {copies} times");
        let e = by_id[id][0];
        assert_eq!(e["type"], s["type"], "{id}");
        assert_eq!(e["userId"], s["userId"], "{id}");
        if !s["event"].is_null() {
            assert_eq!(e["event"], s["event"], "{id}");
        }
        assert_eq!(e["context"]["library"]["name"], library, "{id}");
        for field in ["receivedAt", "timestamp", "originalTimestamp", "sentAt"] {
            assert!(
                e[field]
                    .as_str()
                    .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
                "{id}.{field}: {}",
                e[field]
            );
        }
    }
    let find = |kind: &str| by_id[&format!("{run_id}-{sdk}-{kind}-0")][0];
    assert_eq!(find("track")["properties"]["revenue"], 42.5);
    assert_eq!(find("track")["properties"]["currency"], "EUR");
    assert_eq!(find("page")["name"], "Home");
    assert_eq!(find("screen")["name"], "Dashboard");
    assert_eq!(find("screen")["properties"]["visits"], 3);
    assert_eq!(find("group")["groupId"], format!("{run_id}-g1"));
    assert_eq!(find("alias")["previousId"], format!("{run_id}-anon"));
    let identify = find("identify");
    let traits = if identify["traits"].is_object() {
        &identify["traits"]
    } else {
        &identify["context"]["traits"]
    };
    assert!(traits["email"].is_string(), "identify traits: {identify}");
    let burst = by_id[&format!("{run_id}-{sdk}-burst-7")][0];
    assert_eq!(burst["properties"]["i"], 7);
}

#[tokio::test]
async fn rudderstack_python_sdk_events_are_stored_exactly_once() {
    run_sdk("python", "rudder", "analytics-python").await;
}

#[tokio::test]
async fn segment_python_sdk_events_are_stored_exactly_once() {
    run_sdk("python", "segment", "analytics-python").await;
}

#[tokio::test]
async fn rudderstack_node_sdk_events_are_stored_exactly_once() {
    run_sdk("node", "rudder", "analytics-node").await;
}

#[tokio::test]
async fn segment_node_sdk_events_are_stored_exactly_once() {
    run_sdk("node", "segment", "@segment/analytics-node").await;
}
