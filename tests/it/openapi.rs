//! `docs/openapi.yaml` against a live Keel: schemathesis (PyPI, installed into
//! `.cache/schemathesis` by `tests/schemathesis/setup.sh`) generates valid and invalid
//! requests for every documented operation and fails on any 5xx, an undocumented status,
//! content type or header, or a body that does not match the schema. Two bounded runs: the
//! ingest and operations endpoints with the write key, the admin API with its token.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn schemathesis() -> std::path::PathBuf {
    let root = repo_root();
    let out = Command::new("bash")
        .arg(root.join("tests/schemathesis/setup.sh"))
        .output()
        .expect("run tests/schemathesis/setup.sh");
    assert!(
        out.status.success(),
        "installing schemathesis failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    root.join(".cache/schemathesis/venv/bin/schemathesis")
}

async fn run(bin: std::path::PathBuf, base: String, args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let spec = repo_root().join("docs/openapi.yaml");
        let out = Command::new(&bin)
            .arg("run")
            .arg(&spec)
            .args(["--url", &base])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
                "--max-time",
                "15",
                "--max-examples",
                "30",
                // One worker: CPython 3.11's ast.parse, which hypothesis calls, is not
                // thread-safe ("AST constructor recursion depth mismatch").
                "--workers",
                "1",
                "--request-timeout",
                "15",
                "--phases",
                "examples,coverage,fuzzing",
                "--suppress-health-check",
                "all",
                "--no-color",
            ])
            .arg(format!(
                "--seed={}",
                std::env::var("KEEL_SCHEMATHESIS_SEED").unwrap_or_else(|_| "7".into())
            ))
            .args(&args)
            // Its caches (.schemathesis/, .hypothesis/) go to a scratch directory.
            .current_dir(std::env::temp_dir())
            .output()
            .expect("run schemathesis");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn the_live_api_matches_docs_openapi_yaml() {
    let bin = tokio::task::spawn_blocking(schemathesis)
        .await
        .expect("setup");
    let db = TestDb::create().await;
    let keel = Keel::start(
        KeelOptions::new(&db)
            .env("KEEL_ADMIN__TOKEN", "admin-secret")
            .env("KEEL_PROCESSOR__ENABLED", "true"),
    )
    .await;
    let started = std::time::Instant::now();
    let (ok, out) = run(
        bin.clone(),
        keel.base.clone(),
        vec![
            "--include-path-regex".into(),
            "^/(v1/|health|ready|metrics)".into(),
            "--auth".into(),
            format!("{WRITE_KEY}:"),
        ],
    )
    .await;
    assert!(ok, "ingest and operations endpoints:\n{out}");
    let (ok, out) = run(
        bin,
        keel.base.clone(),
        vec![
            "--include-path-regex".into(),
            "^/admin/".into(),
            "--header".into(),
            "Authorization: Bearer admin-secret".into(),
        ],
    )
    .await;
    assert!(ok, "admin endpoints:\n{out}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    // Still serving after everything schemathesis threw at it.
    let res = http().get(keel.url("/ready")).send().await.expect("ready");
    assert_eq!(res.status().as_u16(), 200);
}
