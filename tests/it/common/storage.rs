//! Storage servers the object-storage and ClickHouse tests start themselves: moto's S3
//! server (`moto_server`, installed by tests/storage/setup.sh under .cache/storage) on a
//! free port, a private ClickHouse (Debian's `clickhouse-server`) with its own config, port
//! and data folder, and DuckDB (the same venv) to read Parquet back. Each stops when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use keel_actors::object_store::aws::AmazonS3Builder;
use keel_actors::object_store::path::Path;
use keel_actors::object_store::ObjectStore;

use super::repo_root;

/// The venv tests/storage/setup.sh makes.
pub fn venv_bin(name: &str) -> PathBuf {
    let p = repo_root().join(".cache/storage/venv/bin").join(name);
    assert!(
        p.exists(),
        "{} missing: run bash tests/storage/setup.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn answers(url: &str) -> bool {
    std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "1", url])
        .status()
        .is_ok_and(|s| s.success())
}

async fn wait_until(what: &str, url: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let u = url.to_owned();
        if tokio::task::spawn_blocking(move || answers(&u))
            .await
            .unwrap_or(false)
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start-up: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not answer at {url}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A moto S3 server on 127.0.0.1 (state in memory).
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Its port.
    pub port: u16,
}

impl Moto {
    /// Starts `moto_server` on a free port.
    pub async fn start() -> Moto {
        let port = free_port();
        let mut child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_until("moto_server", &format!("{endpoint}/"), &mut child).await;
        Moto {
            child,
            endpoint,
            port,
        }
    }

    /// Creates `bucket`.
    pub async fn create_bucket(&self, bucket: &str) {
        let res = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .expect("create bucket");
        assert!(res.status().is_success(), "create bucket: {}", res.status());
    }

    /// A client for `bucket` through `endpoint` (this server, or a proxy in front of it).
    pub fn store(endpoint: &str, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(endpoint)
                .with_bucket_name(bucket)
                .with_region("us-east-1")
                .with_access_key_id("test")
                .with_secret_access_key("test")
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .build()
                .expect("s3 client"),
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every object under `prefix`, sorted by path, with its bytes.
pub async fn objects(store: &dyn ObjectStore, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
    let metas: Vec<_> = store
        .list(prefix.as_ref())
        .try_collect()
        .await
        .expect("list objects");
    let mut out = Vec::new();
    for m in metas {
        // The size the read itself reports: an object Keel rewrites (a table's schema file)
        // may have changed between the listing and the read.
        let got = store.get(&m.location).await.expect("get");
        let size = got.meta.size;
        let bytes = got.bytes().await.expect("bytes");
        assert_eq!(bytes.len() as u64, size, "{} size", m.location);
        out.push((m.location.to_string(), bytes.to_vec()));
    }
    out.sort();
    out
}

/// The lines of a gzip object.
pub fn gunzip_lines(bytes: &[u8]) -> Vec<String> {
    use std::io::Read;
    let mut s = String::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_string(&mut s)
        .expect("gzip text");
    s.lines().map(str::to_owned).collect()
}

/// A private ClickHouse server (HTTP on a free port, data in a temp folder).
pub struct ClickHouseServer {
    child: Child,
    /// HTTP port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl ClickHouseServer {
    /// Starts `clickhouse-server` with its own config.
    pub async fn start() -> ClickHouseServer {
        let bin = ["clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"]
            .into_iter()
            .find(|b| Command::new(b).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
            .unwrap_or_else(|| panic!("clickhouse-server not found: apt-get install clickhouse-server (tests/storage/setup.sh does)"));
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display().to_string();
        let (http, tcp) = (free_port(), free_port());
        std::fs::write(
            dir.path().join("config.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>true</console></logger>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
</yandex>
"#
            ),
        )
        .expect("config");
        std::fs::write(
            dir.path().join("users.xml"),
            r#"<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users><default><password>keel</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default></default></quotas>
</yandex>
"#,
        )
        .expect("users");
        let mut child = Command::new(bin)
            .arg(format!("--config-file={d}/config.xml"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn clickhouse-server");
        wait_until(
            "clickhouse-server",
            &format!("http://127.0.0.1:{http}/ping"),
            &mut child,
        )
        .await;
        ClickHouseServer {
            child,
            port: http,
            _dir: dir,
        }
    }

    /// Runs `sql` as user `default` (password `keel`); answers the body, or panics with
    /// ClickHouse's error.
    pub async fn query(&self, sql: &str) -> String {
        let res = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/", self.port))
            .query(&[("output_format_json_quote_64bit_integers", "0")])
            .basic_auth("default", Some("keel"))
            .body(sql.to_owned())
            .send()
            .await
            .expect("clickhouse query");
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        assert!(status.is_success(), "{sql}: {text}");
        text
    }

    /// Rows of `sql` (`FORMAT JSONEachRow` is appended).
    pub async fn rows(&self, sql: &str) -> Vec<serde_json::Value> {
        self.query(&format!("{sql} FORMAT JSONEachRow"))
            .await
            .lines()
            .map(|l| serde_json::from_str(l).expect("json row"))
            .collect()
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python snippet with DuckDB available; answers its stdout (panics on failure).
pub fn duckdb(script: &str) -> String {
    let out = Command::new(venv_bin("python"))
        .arg("-c")
        .arg(script)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "duckdb script failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
