//! Server configuration: `config/keel.toml` (or `--config`), overridden by `KEEL_*`
//! environment variables (`KEEL_GATEWAY__MAX_BATCH=256` sets `gateway.max_batch`), then by
//! CLI flags; and the conversion of the file's settings into what the actors are built with
//! ([`build_env`]). The workspace file is `workspace.rs`'s.
//!
//! Defaults have one source: the actor layer's `Default`s (`RouterConfig`,
//! `GatewayWriterConfig`, `ProcessorConfig`, `TransformSettings`, `UploaderConfig`,
//! `HttpConfig`); a file section's `Default` reads them, so the two cannot drift.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use keel_actors::destinations::{BuildEnv, HttpConfig};
use keel_actors::transform::TransformPool;

/// Everything `keel serve` is tuned by. Each field is documented in README.md.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct KeelSettings {
    /// Let destinations point at loopback, private and link-local addresses (refused by
    /// default; `KEEL_ALLOW_PRIVATE_TARGETS=true`).
    pub allow_private_targets: bool,
    /// HTTP server settings.
    pub server: ServerSettings,
    /// Postgres connection settings.
    pub database: DatabaseSettings,
    /// Ingest limits and group-commit tuning.
    pub gateway: GatewaySettings,
    /// Admin API settings.
    pub admin: AdminSettings,
    /// Processor tuning.
    pub processor: ProcessorSettings,
    /// Delivery defaults for every router.
    pub router: RouterSettings,
    /// Warehouse uploader settings.
    pub warehouse: WarehouseSettings,
    /// JavaScript transformations (V8 isolate pool).
    pub transform: TransformSettings,
    /// Several nodes on one database: partitions and leases.
    pub cluster: ClusterSettings,
    /// Raw backup of every stored request to object storage.
    pub backup: BackupSettings,
}

/// `[backup]`: every accepted request, as stored, also written to object storage (off the
/// ack path; see docs/operations.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSettings {
    /// Write the backup.
    pub enabled: bool,
    /// Where: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or
    /// `file:///path`. Credentials come from the keys below or the usual environment
    /// variables (`AWS_ACCESS_KEY_ID`…).
    pub url: String,
    /// S3-compatible endpoint URL (MinIO…); path-style requests.
    pub endpoint: String,
    /// S3 region.
    pub region: String,
    /// S3 access key id (Azure: account name).
    pub access_key_id: String,
    /// S3 secret access key (Azure: account key).
    pub secret_access_key: String,
    /// Seconds between uploads of what waits.
    pub upload_interval_secs: f64,
    /// Events per object batch at most.
    pub max_batch_events: i64,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            url: String::new(),
            endpoint: String::new(),
            region: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            upload_interval_secs: 10.0,
            max_batch_events: 20_000,
        }
    }
}

impl BackupSettings {
    /// The location options these settings give (empty keys: from the environment).
    pub fn options(
        &self,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> keel_actors::backup::LocationOptions {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        keel_actors::backup::LocationOptions {
            endpoint: opt(&self.endpoint),
            region: opt(&self.region),
            access_key_id: opt(&self.access_key_id),
            secret_access_key: opt(&self.secret_access_key),
            timeout,
            connect_timeout,
        }
    }
}

/// A duration in whole milliseconds, as the file writes the actors' defaults.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `[cluster]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Partitions the work is split into (by a hash of the ordering key). Every node of a
    /// database must use the same count; it is recorded on first start.
    pub partitions: u32,
    /// This node's id (lease owner name). Empty: `<hostname>:<listen port>`, which stays
    /// the same across restarts, so a restarted node takes its leases back at once.
    pub node_id: String,
    /// Seconds a lease lasts without renewal; a dead node's partitions move after this.
    pub lease_ttl_secs: f64,
    /// Milliseconds between heartbeats (renewals); 0 = a third of the TTL.
    pub heartbeat_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            partitions: 16,
            node_id: String::new(),
            lease_ttl_secs: 10.0,
            heartbeat_ms: 0,
        }
    }
}

impl ClusterSettings {
    /// The heartbeat interval in force.
    pub fn heartbeat(&self) -> std::time::Duration {
        if self.heartbeat_ms == 0 {
            std::time::Duration::from_secs_f64(self.lease_ttl_secs / 3.0)
        } else {
            std::time::Duration::from_millis(self.heartbeat_ms)
        }
    }
}

/// `[transform]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformSettings {
    /// V8 isolates (each on its own thread) running transformations and destination scripts.
    pub isolates: usize,
    /// Heap cap per isolate, MB; a call that reaches it is stopped and dead-lettered.
    pub heap_limit_mb: usize,
    /// Time budget of one call (a batch of events), milliseconds.
    pub call_timeout_ms: u64,
    /// Timeout of one `fetch`/`fetchV2` request from a script, milliseconds.
    pub fetch_timeout_ms: u64,
    /// Requests one call may make with `fetch`/`fetchV2`.
    pub fetch_max_requests: usize,
    /// How long the processor waits for a destination script to map a batch, milliseconds;
    /// past it (and for a minute after) that destination's events are stored unmapped and
    /// its own router maps them, so a slow script never holds up the other destinations.
    pub mapping_deadline_ms: u64,
    /// Folder with `libraries/<name>.js` and `destinations/<name>/transform.js`.
    pub scripts_dir: String,
}

impl Default for TransformSettings {
    fn default() -> Self {
        let d = keel_actors::transform::TransformConfig::default();
        Self {
            isolates: d.isolates,
            heap_limit_mb: d.heap_limit_bytes >> 20,
            call_timeout_ms: millis(d.call_timeout),
            fetch_timeout_ms: millis(d.fetch_timeout),
            fetch_max_requests: d.fetch_max_requests,
            mapping_deadline_ms: millis(d.mapping_deadline),
            scripts_dir: "transformer-scripts".into(),
        }
    }
}

impl TransformSettings {
    /// The pool's configuration these settings make.
    pub fn config(&self, allow_private_targets: bool) -> keel_actors::transform::TransformConfig {
        keel_actors::transform::TransformConfig {
            isolates: self.isolates,
            heap_limit_bytes: self.heap_limit_mb << 20,
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            fetch_timeout: Duration::from_millis(self.fetch_timeout_ms),
            fetch_max_requests: self.fetch_max_requests,
            mapping_deadline: Duration::from_millis(self.mapping_deadline_ms),
            allow_private_targets,
            ..Default::default()
        }
    }
}

/// `[warehouse]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarehouseSettings {
    /// First retry delay after a failed load, milliseconds.
    pub retry_base_ms: u64,
    /// Largest retry delay, milliseconds.
    pub retry_max_backoff_ms: u64,
    /// Columns a warehouse table may get; values for more go to `keel_discards`.
    pub max_columns: usize,
}

impl Default for WarehouseSettings {
    fn default() -> Self {
        let d = keel_actors::warehouse::UploaderConfig::default();
        Self {
            retry_base_ms: millis(d.retry_base),
            retry_max_backoff_ms: millis(d.retry_max_backoff),
            max_columns: d.max_columns,
        }
    }
}

/// `[processor]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorSettings {
    /// Run the processor on this node; false makes a gateway-only node.
    pub enabled: bool,
    /// Requests (`gw_jobs` rows) per processor batch.
    pub batch_jobs: i64,
    /// Milliseconds between looks for new requests when idle.
    pub idle_poll_ms: u64,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        let d = keel_actors::processor::ProcessorConfig::default();
        Self {
            enabled: d.enabled,
            batch_jobs: d.batch_jobs,
            idle_poll_ms: millis(d.idle_poll),
        }
    }
}

/// `[router]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterSettings {
    /// Deliveries in flight per destination.
    pub concurrency: usize,
    /// Whole-request timeout for a delivery, seconds.
    pub timeout_secs: f64,
    /// Connect timeout, seconds.
    pub connect_timeout_secs: f64,
    /// First retry backoff, milliseconds.
    pub retry_base_ms: u64,
    /// Largest retry backoff, milliseconds.
    pub retry_max_backoff_ms: u64,
    /// Attempts before a job is dead-lettered.
    pub max_attempts: i32,
    /// Seconds since the first failure before a job is dead-lettered.
    pub max_retry_secs: u64,
    /// Jobs a router holds in memory.
    pub window: usize,
    /// Milliseconds between looks for new jobs without a wake-up.
    pub poll_interval_ms: u64,
    /// Consecutive failed attempts that open a destination's circuit breaker.
    pub breaker_threshold: u32,
    /// Milliseconds between probes while the breaker is open.
    pub breaker_probe_interval_ms: u64,
    /// Delivery outcomes not yet written to Postgres beyond which a router starts no new
    /// delivery; a crash repeats at most this many plus `concurrency` deliveries. For a batching
    /// destination, up to half (at most `concurrency` × its batch size) may be delivered
    /// jobs of rows still waiting for other jobs, recorded only in memory for at most a
    /// second.
    pub max_unrecorded: usize,
}

impl Default for RouterSettings {
    fn default() -> Self {
        let (d, http) = (
            keel_actors::router::RouterConfig::default(),
            HttpConfig::default(),
        );
        Self {
            concurrency: d.concurrency,
            timeout_secs: http.timeout.as_secs_f64(),
            connect_timeout_secs: http.connect_timeout.as_secs_f64(),
            retry_base_ms: millis(d.retry.base),
            retry_max_backoff_ms: millis(d.retry.max_backoff),
            max_attempts: d.retry.max_attempts,
            max_retry_secs: d.retry.max_duration.as_secs(),
            window: d.window,
            poll_interval_ms: millis(d.poll_interval),
            breaker_threshold: d.breaker_threshold,
            breaker_probe_interval_ms: millis(d.breaker_probe_interval),
            max_unrecorded: d.max_unrecorded,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on (`KEEL_LISTEN`, `--listen`).
    pub listen: String,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Seconds to let in-flight requests finish after SIGTERM.
    pub shutdown_timeout_secs: u64,
    /// Seconds routers and warehouse uploaders get to finish in-flight work at shutdown
    /// (and at a reload that stops them); what still runs then is abandoned and redone.
    pub drain_timeout_secs: u64,
    /// Path of the workspace file (`KEEL_WORKSPACE`, `--workspace`).
    pub workspace: String,
    /// Seconds a client gets to send a request's head, and again to send its body; a client
    /// slower than that (slowloris) is cut off (408).
    pub read_timeout_secs: u64,
    /// Seconds an idle keep-alive connection stays open between requests.
    pub keep_alive_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            shutdown_timeout_secs: 30,
            drain_timeout_secs: 10,
            workspace: "config/workspace.json".into(),
            read_timeout_secs: 10,
            keep_alive_secs: 5,
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Postgres URL (`DATABASE_URL`). Empty: use the local server or an embedded cluster.
    pub url: String,
    /// Server probed when `url` is empty; database `keel` is created there if missing.
    pub local_url: String,
    /// Data directory of the private cluster started when no local server answers.
    pub embedded_dir: String,
    /// Maximum pooled connections.
    pub pool_size: usize,
    /// Seconds to wait for a connection or a statement before answering 503.
    pub timeout_secs: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            local_url: "postgres://postgres@127.0.0.1:5432".into(),
            embedded_dir: "data/pg".into(),
            pool_size: 16,
            timeout_secs: 5,
        }
    }
}

/// `[gateway]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// Largest accepted event, in bytes of JSON.
    pub max_event_bytes: usize,
    /// Largest accepted request body, in bytes, compressed and inflated alike.
    pub max_request_bytes: usize,
    /// Requests per group commit at most.
    pub max_batch: usize,
    /// Group commits running at once at most.
    pub max_concurrent_flushes: usize,
    /// Events that must wait before a group commit starts beside a running one.
    pub concurrent_flush_min_events: usize,
    /// Milliseconds an idle writer waits to gather a group.
    pub max_wait_ms: u64,
    /// Events per second each source may send (0 = unlimited); more is answered 429.
    pub rate_limit_events_per_sec: u32,
    /// Events a source may send at once above its rate (0 = one second's worth).
    pub rate_limit_burst: u32,
    /// Payload bytes that may wait for commit; beyond it requests get 429.
    pub queue_bytes: usize,
    /// `Retry-After` seconds sent with 429 and 503.
    pub retry_after_secs: u64,
    /// messageId dedup window in seconds.
    pub dedup_window_secs: u64,
}

impl GatewaySettings {
    /// The per-source burst in force: `rate_limit_burst`, or one second's worth when 0.
    pub fn effective_rate_burst(&self) -> u32 {
        if self.rate_limit_burst == 0 {
            self.rate_limit_events_per_sec
        } else {
            self.rate_limit_burst
        }
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        let d = keel_actors::gateway::GatewayWriterConfig::default();
        Self {
            max_event_bytes: 32 * 1024,
            max_request_bytes: 500 * 1024,
            max_batch: d.max_batch,
            max_concurrent_flushes: d.max_flushes,
            concurrent_flush_min_events: d.concurrent_flush_min_events,
            max_wait_ms: millis(d.max_wait),
            rate_limit_events_per_sec: 0,
            rate_limit_burst: 0,
            queue_bytes: 64 * 1024 * 1024,
            retry_after_secs: 1,
            dedup_window_secs: d.dedup_window.as_secs(),
        }
    }
}

impl GatewaySettings {
    /// The group-commit wait as a duration.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Bearer token for `/admin`; empty disables the admin API.
    pub token: String,
}

/// A configuration problem, naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file or an environment override is malformed.
    #[error("{0}")]
    Figment(Box<figment::Error>),
    /// A value is out of range.
    #[error("{file}: {field}: {problem}")]
    Invalid {
        /// The file the value came from (or the environment).
        file: String,
        /// The dotted field name.
        field: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

impl KeelSettings {
    /// Loads `path` (if it exists; a missing default file is fine, a missing explicit one is
    /// an error), then `KEEL_*` overrides, then validates ranges.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        if explicit && !path.exists() {
            return Err(ConfigError::Invalid {
                file: path.display().to_string(),
                field: "-".into(),
                problem: "file not found".into(),
            });
        }
        let mut figment = Figment::from(Serialized::defaults(KeelSettings::default()));
        if path.exists() {
            figment = figment.merge(Toml::file(path));
        }
        // KEEL_CONFIG / KEEL_WORKSPACE / KEEL_LISTEN / KEEL_LOG_FORMAT are CLI-level variables
        // handled by clap; KEEL_LOG and KEEL_TEST_HOOKS are read by the process, not the
        // configuration.
        figment = figment.merge(
            Env::prefixed("KEEL_")
                .ignore(&[
                    "CONFIG",
                    "WORKSPACE",
                    "LISTEN",
                    "LOG",
                    "LOG_FORMAT",
                    "TEST_HOOKS",
                    "ADMIN_TOKEN",
                ])
                .split("__"),
        );
        let mut config: KeelSettings = figment
            .extract()
            .map_err(|e| ConfigError::Figment(Box::new(e)))?;
        // The admin token has a short variable of its own (KEEL_ADMIN__TOKEN works too).
        if let Ok(token) = std::env::var("KEEL_ADMIN_TOKEN") {
            config.admin.token = token;
        }
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |field: &str, problem: &str| ConfigError::Invalid {
            file: file.to_owned(),
            field: field.to_owned(),
            problem: problem.to_owned(),
        };
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "server.listen",
                "must be an address like 127.0.0.1:8080",
            ));
        }
        if self.server.read_timeout_secs == 0 {
            return Err(bad("server.read_timeout_secs", "must be at least 1"));
        }
        let g = &self.gateway;
        if g.max_event_bytes == 0 || g.max_event_bytes > g.max_request_bytes {
            return Err(bad(
                "gateway.max_event_bytes",
                "must be > 0 and <= gateway.max_request_bytes",
            ));
        }
        if g.max_batch == 0 {
            return Err(bad("gateway.max_batch", "must be at least 1"));
        }
        if g.max_concurrent_flushes == 0 || g.max_concurrent_flushes > 16 {
            return Err(bad(
                "gateway.max_concurrent_flushes",
                "must be between 1 and 16",
            ));
        }
        if g.queue_bytes < g.max_request_bytes {
            return Err(bad(
                "gateway.queue_bytes",
                "must be at least gateway.max_request_bytes",
            ));
        }
        let r = &self.router;
        if r.concurrency == 0 {
            return Err(bad("router.concurrency", "must be at least 1"));
        }
        if r.max_attempts < 1 {
            return Err(bad("router.max_attempts", "must be at least 1"));
        }
        if !(r.timeout_secs > 0.0 && r.connect_timeout_secs > 0.0) {
            return Err(bad("router.timeout_secs", "timeouts must be positive"));
        }
        if r.window < 4 * r.concurrency {
            return Err(bad(
                "router.window",
                "must be at least 4 x router.concurrency",
            ));
        }
        if r.max_unrecorded == 0 {
            return Err(bad("router.max_unrecorded", "must be at least 1"));
        }
        if self.processor.batch_jobs < 1 {
            return Err(bad("processor.batch_jobs", "must be at least 1"));
        }
        if self.database.pool_size == 0 {
            return Err(bad("database.pool_size", "must be at least 1"));
        }
        let t = &self.transform;
        if t.isolates == 0 || t.isolates > 64 {
            return Err(bad("transform.isolates", "must be between 1 and 64"));
        }
        if t.heap_limit_mb < 16 {
            return Err(bad("transform.heap_limit_mb", "must be at least 16"));
        }
        if t.call_timeout_ms < 10 {
            return Err(bad("transform.call_timeout_ms", "must be at least 10"));
        }
        let b = &self.backup;
        if b.enabled {
            if let Err(e) = keel_actors::backup::location(
                &b.url,
                &b.options(Duration::from_secs(30), Duration::from_secs(5)),
            ) {
                return Err(bad("backup.url", &e.problem));
            }
            if !(b.upload_interval_secs > 0.0 && b.upload_interval_secs <= 86_400.0) {
                return Err(bad(
                    "backup.upload_interval_secs",
                    "must be between 0 and 86400",
                ));
            }
            if b.max_batch_events < 1 {
                return Err(bad("backup.max_batch_events", "must be at least 1"));
            }
        }
        let c = &self.cluster;
        if c.partitions == 0 || c.partitions > 4096 {
            return Err(bad("cluster.partitions", "must be between 1 and 4096"));
        }
        if !(c.lease_ttl_secs >= 1.0 && c.lease_ttl_secs <= 3600.0) {
            return Err(bad("cluster.lease_ttl_secs", "must be between 1 and 3600"));
        }
        if c.heartbeat().as_secs_f64() > c.lease_ttl_secs / 2.0 || c.heartbeat().is_zero() {
            return Err(bad(
                "cluster.heartbeat_ms",
                "must be positive and at most half of cluster.lease_ttl_secs",
            ));
        }
        Ok(())
    }
}

/// Outbound client settings every destination kind is built with (start-up and reload).
pub fn http_config(config: &KeelSettings) -> HttpConfig {
    HttpConfig {
        timeout: Duration::from_secs_f64(config.router.timeout_secs),
        connect_timeout: Duration::from_secs_f64(config.router.connect_timeout_secs),
        allow_private_targets: config.allow_private_targets,
        ..HttpConfig::default()
    }
}

/// What destinations and transformations are built with: client settings, the script pool,
/// the scripts folder and the workspace file's folder.
pub fn build_env(config: &KeelSettings, pool: Option<Arc<TransformPool>>) -> BuildEnv {
    BuildEnv {
        http: http_config(config),
        pool,
        scripts_dir: config.transform.scripts_dir.clone().into(),
        workspace_dir: crate::workspace::workspace_dir(std::path::Path::new(
            &config.server.workspace,
        )),
    }
}
