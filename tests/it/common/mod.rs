//! Test harness: a fresh database per test (created and dropped), the real `keel` binary
//! started on a free port against it, an HTTP client, a TCP proxy in front of Postgres that
//! a test can cut to simulate a database outage, a private Postgres cluster a test can
//! restart, fault-injecting sinks, and the history checker the fault tests share.

#![allow(dead_code)]

pub mod history;
pub mod pgcluster;
pub mod proxy;
pub mod sink;
pub mod storage;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// Server everything runs against.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Write key of the enabled test source.
pub const WRITE_KEY: &str = "test-write-key";
/// Id of the enabled test source.
pub const SOURCE_ID: &str = "src_test";
/// Write key of a disabled source.
pub const DISABLED_KEY: &str = "disabled-write-key";

/// Connects to `url` and drives the connection in the background.
pub async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("connect {url}: {e} (is PostgreSQL running on 127.0.0.1:5432?)")
        });
    tokio::spawn(conn);
    client
}

/// A database of its own for one test; dropped (with its connections) at the end.
pub struct TestDb {
    /// Database name.
    pub name: String,
    /// URL to it.
    pub url: String,
}

impl TestDb {
    /// Creates `keel_test_<random>`.
    pub async fn create() -> Self {
        let name = format!("keel_test_{:016x}", rand::random::<u64>());
        pg(PG_ADMIN_URL)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Self { name, url }
    }

    /// URL of this database through another host:port (e.g. a proxy).
    pub fn url_via(&self, addr: &str) -> String {
        format!("postgres://postgres@{addr}/{}", self.name)
    }

    /// A client on this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        pg(&self.url).await
    }

    /// The `bigint` that `sql` (a `SELECT count(*) …`) returns, on a fresh client.
    pub async fn count(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Runs outside the test's runtime, which may be gone by now.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((c, conn)) =
                    tokio_postgres::connect(PG_ADMIN_URL, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}

/// The workspace most tests use: one enabled source, one disabled.
pub fn workspace() -> Value {
    json!({
        "sources": [
            {"id": SOURCE_ID, "name": "Test", "writeKey": WRITE_KEY, "enabled": true, "destinations": []},
            {"id": "src_off", "name": "Off", "writeKey": DISABLED_KEY, "enabled": false, "destinations": []}
        ]
    })
}

/// Options for starting Keel.
pub struct KeelOptions {
    /// Workspace JSON written to a temp file.
    pub workspace: Value,
    /// `DATABASE_URL`; `None` leaves it unset.
    pub database_url: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory (for the embedded default's relative paths).
    pub cwd: Option<PathBuf>,
}

impl KeelOptions {
    /// Defaults against `db`: a gateway-only node (the processor does not consume
    /// `gw_jobs`), so tests can assert what the gateway stored.
    pub fn new(db: &TestDb) -> Self {
        Self {
            workspace: workspace(),
            database_url: Some(db.url.clone()),
            env: vec![
                ("KEEL_PROCESSOR__ENABLED".into(), "false".into()),
                // Test destinations are local servers.
                ("KEEL_ALLOW_PRIVATE_TARGETS".into(), "true".into()),
                // One node per test database, the same across restarts (a restarted node
                // takes its leases back at once, as one on a fixed port does). Cluster
                // tests give each node its own id.
                ("KEEL_CLUSTER__NODE_ID".into(), format!("node-{}", db.name)),
            ],
            cwd: None,
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// A running `keel serve`.
pub struct Keel {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Everything the process wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
    /// The workspace file it was started with (tests rewrite it to test reloads).
    pub ws_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Keel {
    /// Starts Keel on a free port and waits until it listens.
    pub async fn start(opts: KeelOptions) -> Keel {
        let dir = tempfile::tempdir().expect("temp dir");
        let ws_path = dir.path().join("workspace.json");
        std::fs::write(&ws_path, serde_json::to_vec(&opts.workspace).expect("json"))
            .expect("write workspace");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
        cmd.arg("serve")
            .arg("--workspace")
            .arg(&ws_path)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("DATABASE_URL")
            .env_remove("KEEL_CONFIG")
            .env("KEEL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Keel rejects unknown KEEL_* variables, and the test runner's own (KEEL_FAULT_LONG,
        // KEEL_FUZZ_SECONDS…) are not Keel's: a test passes what Keel should see explicitly.
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("KEEL_")) {
                cmd.env_remove(k);
            }
        }
        cmd.env("KEEL_LOG", "info");
        // Keep tests independent of any config/keel.toml in the working directory.
        cmd.arg("--config").arg(dir.path().join("keel.toml"));
        std::fs::write(dir.path().join("keel.toml"), "").expect("write config");
        if let Some(url) = &opts.database_url {
            cmd.env("DATABASE_URL", url);
        }
        if let Some(cwd) = &opts.cwd {
            cmd.current_dir(cwd);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn keel");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(pos) = line.find("addr=") {
                    if line.contains("listening") {
                        let addr: String = line[pos + 5..]
                            .chars()
                            .take_while(|c| !c.is_whitespace())
                            .collect();
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                }
                let mut l = log2.lock().expect("log lock");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(120)))
            .await
            .expect("join");
        let addr = match addr {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "keel did not start listening; log:\n{}",
                    log.lock().expect("log")
                );
            }
        };
        Keel {
            child,
            base: format!("http://{addr}"),
            log,
            ws_path,
            _dir: dir,
        }
    }

    /// Full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replaces the workspace file (for a reload).
    pub fn write_workspace(&self, ws: &Value) {
        std::fs::write(&self.ws_path, serde_json::to_vec(ws).expect("json"))
            .expect("write workspace");
    }

    /// Sends SIGHUP (reload).
    pub fn sighup(&self) {
        let _ = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }

    /// An admin API request with the test admin token (and `body` as JSON, if any): status
    /// and JSON body (`null` when it is not JSON).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = http()
            .request(method, self.url(path))
            .bearer_auth("admin-secret");
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.expect("admin request");
        (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        )
    }

    /// `GET path` with the test admin token: status and JSON body.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.admin(reqwest::Method::GET, path, None).await
    }

    /// The `/admin/dlq` listing of `destination` once it holds `count` dead letters, or as it
    /// is after `timeout`.
    pub async fn wait_dlq(&self, destination: &str, count: u64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let path = format!("/admin/dlq?destination={destination}");
        loop {
            let (status, doc) = self.admin_get(&path).await;
            assert_eq!(status, 200, "{doc}");
            if doc["count"] == count || Instant::now() > deadline {
                return doc;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `POST path` with the test admin token and a JSON body: status and JSON body.
    pub async fn admin_post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.admin(reqwest::Method::POST, path, Some(body)).await
    }

    /// `POST /admin/reload` with the test admin token: status and JSON body.
    pub async fn admin_reload(&self) -> (u16, Value) {
        self.admin(reqwest::Method::POST, "/admin/reload", None)
            .await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        http()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `Authorization` header value for `key`.
pub fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

/// An HTTP client for tests.
/// The `keel` binary as a command, without the caller's database, config or workspace
/// variables.
pub fn keel_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
    c.env_remove("DATABASE_URL")
        .env_remove("KEEL_CONFIG")
        .env_remove("KEEL_WORKSPACE");
    c
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Every event stored in `gw_jobs`, in id order, flattened.
pub async fn stored_events(db: &TestDb) -> Vec<Value> {
    let rows = db
        .client()
        .await
        .query("SELECT payload::json FROM gw_jobs ORDER BY id", &[])
        .await
        .expect("query gw_jobs");
    rows.iter()
        .flat_map(|r| {
            let v: Value = r.get(0);
            v.as_array().cloned().unwrap_or_default()
        })
        .collect()
}

/// Number of `gw_jobs` rows.
pub async fn job_count(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM gw_jobs").await
}

/// Gzips `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// Repository root (for scripts under tests/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A workspace with the test source routed to webhook destinations `(id, url, extra config)`.
pub fn workspace_with_webhooks(hooks: &[(&str, &str, Value)]) -> Value {
    let dests: Vec<Value> = hooks
        .iter()
        .map(|(id, url, extra)| {
            let mut config = json!({"webhookUrl": url, "webhookMethod": "POST",
                                    "headers": [{"from": "X-Test", "to": *id}]});
            if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
                for (k, v) in e {
                    c.insert(k.clone(), v.clone());
                }
            }
            json!({"id": id, "name": format!("Hook {id}"), "enabled": true, "config": config,
                   "destinationDefinition": {"name": "WEBHOOK", "displayName": "Webhook"}})
        })
        .collect();
    json!({"sources": [{"id": SOURCE_ID, "name": "Test", "writeKey": WRITE_KEY, "enabled": true, "destinations": dests}]})
}

/// Posts `events` as one `/v1/batch` request to `url` with the test write key, asserting it
/// is acknowledged.
pub async fn post_batch(client: &reqwest::Client, url: &str, events: &[Value]) {
    let res = client
        .post(url)
        .header("Authorization", basic(WRITE_KEY))
        .json(&json!({ "batch": events }))
        .send()
        .await
        .expect("send batch");
    assert_eq!(
        res.status().as_u16(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
}

/// Sends `events` in batches of `per_request`, asserting every request is acknowledged.
pub async fn send_batches(keel: &Keel, events: &[Value], per_request: usize) {
    let client = http();
    let url = keel.url("/v1/batch");
    for chunk in events.chunks(per_request) {
        post_batch(&client, &url, chunk).await;
    }
}

/// The whole pipeline (processor on) with fast-retry router settings for tests.
pub fn fast_router(opts: KeelOptions) -> KeelOptions {
    opts.env("KEEL_PROCESSOR__ENABLED", "true")
        .env("KEEL_ROUTER__RETRY_BASE_MS", "20")
        .env("KEEL_ROUTER__RETRY_MAX_BACKOFF_MS", "200")
        .env("KEEL_ROUTER__POLL_INTERVAL_MS", "50")
        .env("KEEL_ROUTER__TIMEOUT_SECS", "2")
        .env("KEEL_ADMIN__TOKEN", "admin-secret")
}
