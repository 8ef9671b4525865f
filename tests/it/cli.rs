//! The command line: `check-config` reports every error with its path and exits non-zero;
//! `migrate` applies the schema; bad configuration names the file and field.

use serde_json::json;

use crate::common::*;

#[test]
fn check_config_accepts_the_shipped_example() {
    let out = keel_command()
        .current_dir(repo_root())
        .arg("check-config")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 source(s), 1 destination(s)"));
}

/// Writes `workspace` to `path`, runs `check-config` on it (repository config), asserts it
/// fails and returns what it printed on stderr.
fn check_config_fails(path: &std::path::Path, workspace: &serde_json::Value) -> String {
    std::fs::write(path, workspace.to_string()).expect("write");
    let out = keel_command()
        .current_dir(repo_root())
        .arg("check-config")
        .arg("--workspace")
        .arg(path)
        .output()
        .expect("run");
    assert!(!out.status.success(), "check-config accepted {workspace}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_config_prints_every_error_with_its_json_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("ws.json");
    std::fs::write(
        &ws,
        json!({"sources": [
            {"id": "s1", "name": "a", "writeKey": "k", "enabled": true,
             "destinations": [{"id": "d1", "name": "x", "enabled": true, "config": {},
                               "destinationDefinition": {"name": "NOPE"}}]},
            {"id": "s2", "writeKey": "k", "enabled": "yes"}
        ]})
        .to_string(),
    )
    .expect("write");
    let out = keel_command()
        .arg("check-config")
        .arg("--workspace")
        .arg(&ws)
        .arg("--config")
        .arg(dir.path().join("none.toml"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "none.toml: -: file not found",
        "$.sources[0].destinations[0].destinationDefinition.name: unknown destination kind \"NOPE\"",
        "$.sources[1].name: missing",
        "$.sources[1].writeKey: used by another source",
        "$.sources[1].enabled: must be true or false",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(
        err.contains(&ws.display().to_string()),
        "names the file:\n{err}"
    );
    let ws2 = dir.path().join("ws2.json");
    let bad_url = json!({"sources": [{"id": "s1", "name": "a", "writeKey": "k", "enabled": true,
        "destinations": [{"id": "d1", "name": "x", "enabled": true, "config": {"webhookUrl": "not a url"},
                          "destinationDefinition": {"name": "WEBHOOK"}}]}]});
    let err2 = check_config_fails(&ws2, &bad_url);
    assert!(
        err2.contains("$.sources[0].destinations[0].config.webhookUrl: \"not a url\" does not fit: The http(s) URL"),
        "{err2}"
    );
    let ws3 = dir.path().join("ws3.json");
    let pg = |config: serde_json::Value| {
        json!({"id": "w", "name": "wh", "enabled": true, "config": config,
               "destinationDefinition": {"name": "POSTGRES"}})
    };
    let bad_wh = json!({"sources": [{"id": "s1", "name": "a", "writeKey": "k", "enabled": true,
        "destinations": [pg(json!({"database": "d", "user": "u"})),
                         pg(json!({"host": "h", "database": "d", "user": "u", "sslMode": "bogus"}))]}]});
    let err3 = check_config_fails(&ws3, &bad_wh);
    assert!(
        err3.contains("$.sources[0].destinations[0].config.host: missing (required by POSTGRES)"),
        "{err3}"
    );
    let one = json!({"sources": [{"id": "s1", "name": "a", "writeKey": "k", "enabled": true,
        "destinations": [pg(json!({"host": "h", "database": "d", "user": "u", "sslMode": "bogus",
                                    "port": 5432}))]}]});
    let err4 = check_config_fails(&ws3, &one);
    assert!(
        err4.contains("$.sources[0].destinations[0].config.sslMode: \"bogus\" is not one of"),
        "{err4}"
    );
}

#[test]
fn bad_settings_name_the_file_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("keel.toml");
    std::fs::write(&cfg, "[gateway]\nmax_batch = \"lots\"\n").expect("write");
    let out = keel_command()
        .current_dir(repo_root())
        .arg("check-config")
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_batch") && err.contains("keel.toml"),
        "{err}"
    );
    let out = keel_command()
        .current_dir(repo_root())
        .env("KEEL_GATEWAY__MAX_EVENT_BYTES", "0")
        .arg("check-config")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway.max_event_bytes"));
    let out = keel_command()
        .current_dir(repo_root())
        .args(["serve", "--listen", "nowhere"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

#[tokio::test]
async fn migrate_applies_the_schema_and_is_idempotent() {
    let db = TestDb::create().await;
    for _ in 0..2 {
        let out = keel_command()
            .current_dir(repo_root())
            .arg("migrate")
            .env("DATABASE_URL", &db.url)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tables: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in ["checkpoints", "dedup", "gw_jobs"] {
        assert!(tables.iter().any(|x| x == t), "{t} in {tables:?}");
    }
}
