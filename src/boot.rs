//! Start-up and shutdown of `keel serve`: resolve the database (explicit, local or
//! embedded), migrate under the advisory lock, install the Prometheus recorder, start the
//! supervision tree and the HTTP server, and on SIGTERM/SIGINT stop accepting, let
//! in-flight requests finish their commits, and exit cleanly.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use keel_actors::cluster::{ClusterConfig, LeaseGuard};
use keel_actors::gateway::GatewayWriterConfig;
use keel_actors::messages::{FlushNow, LeaveCluster};
use keel_actors::processor::ProcessorConfig;
use keel_actors::router::policy::RetryPolicy;
use keel_actors::router::RouterConfig;
use keel_actors::sampler::TelemetrySamplerConfig;
use keel_actors::store::{run_migrations, PoolConfig, Store};
use keel_actors::supervisor::{DrainAll, PipelineConfig, RootSupervisor, SupervisorConfig};
use keel_actors::telemetry;
use keel_actors::transform::TransformPool;
use keel_actors::warehouse::UploaderConfig;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::Semaphore;

use crate::config::{build_env, KeelSettings};
use crate::embedded_pg::{self, EmbeddedCluster};
use crate::http::state::{source_rate_limiter, AppState};
use crate::http::{self, auth::SourceIndex};
use crate::workspace::Workspace;
use keel_actors::destinations::BuildEnv;

/// Latency buckets (seconds) for every `_seconds` histogram.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for per-flush sizes.
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

/// The database Keel uses, and the private cluster behind it when one was started.
pub struct Database {
    /// Connection string.
    pub url: String,
    /// Kept alive for the process lifetime; stops the cluster when dropped.
    pub cluster: Option<EmbeddedCluster>,
}

/// Resolves `DATABASE_URL` / `database.url`, else the local or embedded default.
pub async fn database(config: &KeelSettings) -> anyhow::Result<Database> {
    if !config.database.url.is_empty() {
        return Ok(Database {
            url: config.database.url.clone(),
            cluster: None,
        });
    }
    let (url, cluster) = embedded_pg::resolve(&config.database).await?;
    Ok(Database { url, cluster })
}

/// Applies pending migrations and logs what ran.
pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
    let applied = run_migrations(url)
        .await
        .context("applying database migrations")?;
    if applied.is_empty() {
        tracing::info!("database schema is current");
    } else {
        tracing::info!(?applied, "applied migrations");
    }
    Ok(applied)
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Prefix("keel_gateway_flush_".into()), SIZE_BUCKETS)?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    telemetry::describe_all();
    telemetry::register_static_series();
    Ok(handle)
}

/// Starts the V8 isolate pool (`[transform]`).
pub fn start_transforms(config: &KeelSettings) -> anyhow::Result<Arc<TransformPool>> {
    TransformPool::start(config.transform.config(config.allow_private_targets))
        .context("starting the JavaScript isolate threads")
}

/// Builds the actor tree's settings from the configuration and workspace.
pub fn pipeline_config(
    config: &KeelSettings,
    workspace: &Workspace,
    env: &BuildEnv,
) -> anyhow::Result<PipelineConfig> {
    let r = &config.router;
    let routing = crate::workspace::routing_table(
        workspace,
        env,
        std::path::Path::new(&config.server.workspace),
    )?;
    Ok(PipelineConfig {
        writer: GatewayWriterConfig {
            max_batch: config.gateway.max_batch,
            concurrent_flush_min_events: config.gateway.concurrent_flush_min_events,
            max_flushes: config.gateway.max_concurrent_flushes,
            max_wait: config.gateway.max_wait(),
            dedup_window: Duration::from_secs(config.gateway.dedup_window_secs),
            ..GatewayWriterConfig::default()
        },
        processor: ProcessorConfig {
            enabled: config.processor.enabled,
            batch_jobs: config.processor.batch_jobs,
            idle_poll: Duration::from_millis(config.processor.idle_poll_ms),
            routing_log_window: Duration::from_secs(config.gateway.dedup_window_secs),
            partitions: config.cluster.partitions,
            backup: config.backup.enabled,
        },
        router: RouterConfig {
            concurrency: r.concurrency,
            retry: RetryPolicy {
                base: Duration::from_millis(r.retry_base_ms),
                max_backoff: Duration::from_millis(r.retry_max_backoff_ms),
                max_attempts: r.max_attempts,
                max_duration: Duration::from_secs(r.max_retry_secs),
            },
            window: r.window,
            poll_interval: Duration::from_millis(r.poll_interval_ms),
            breaker_threshold: r.breaker_threshold,
            breaker_probe_interval: Duration::from_millis(r.breaker_probe_interval_ms),
            max_unrecorded: r.max_unrecorded,
            ..RouterConfig::default()
        },
        warehouse: UploaderConfig {
            retry_base: Duration::from_millis(config.warehouse.retry_base_ms),
            retry_max_backoff: Duration::from_millis(config.warehouse.retry_max_backoff_ms),
            max_columns: config.warehouse.max_columns.clamp(16, 1500),
            ..UploaderConfig::default()
        },
        routing: Arc::new(routing),
        supervisor: SupervisorConfig::default(),
        guard: LeaseGuard::new(),
        // Needs the listen address: `serve` fills it in.
        cluster: None,
        sampler: TelemetrySamplerConfig::default(),
        backup: backup(config)?,
    })
}

/// The raw backup of `[backup]`, when enabled.
pub fn backup(config: &KeelSettings) -> anyhow::Result<Option<keel_actors::backup::Backup>> {
    let b = &config.backup;
    if !b.enabled {
        return Ok(None);
    }
    let options = b.options(
        Duration::from_secs_f64(config.router.timeout_secs),
        Duration::from_secs_f64(config.router.connect_timeout_secs),
    );
    let store = keel_actors::backup::location(&b.url, &options).context("backup.url")?;
    Ok(Some(keel_actors::backup::Backup {
        store,
        upload_interval: Duration::from_secs_f64(b.upload_interval_secs),
        max_batch_events: b.max_batch_events,
    }))
}

/// Raises the soft open-file limit to the hard limit: every client connection, pooled
/// Postgres connection and destination connection is a descriptor, and distributions often
/// start services with a soft limit of 1024.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, soft, "could not raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
}

/// Runs the service until SIGTERM/SIGINT.
pub async fn serve(config: KeelSettings, workspace: Workspace) -> anyhow::Result<()> {
    raise_fd_limit();
    let db = database(&config).await?;
    migrate(&db.url).await?;
    let prometheus = install_metrics()?;
    let listener = TcpListener::bind(&config.server.listen)
        .with_context(|| format!("binding {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let node_id = node_id(&config, addr);
    let store = Store::connect(
        &db.url,
        &PoolConfig {
            max_size: config.database.pool_size,
            timeout: Duration::from_secs(config.database.timeout_secs),
        },
    )?
    .for_node(&node_id);
    let partitions = i32::try_from(config.cluster.partitions).unwrap_or(i32::MAX);
    let recorded = store
        .cluster_init(partitions)
        .await
        .context("setting up partition leases")?;
    if recorded != partitions {
        anyhow::bail!(
            "cluster.partitions is {partitions} but this database was set up with {recorded} \
             partitions; every node must use {recorded} (the count cannot change while data is in flight)"
        );
    }
    let transforms = start_transforms(&config)?;
    let env = build_env(&config, Some(transforms.clone()));
    let mut pipeline = pipeline_config(&config, &workspace, &env)?;
    pipeline.cluster = Some(ClusterConfig {
        partitions: config.cluster.partitions,
        lease_ttl: Duration::from_secs_f64(config.cluster.lease_ttl_secs),
        heartbeat: config.cluster.heartbeat(),
        addr: addr.to_string(),
        worker: config.processor.enabled,
    });
    let problems = pipeline.routing.check_scripts().await;
    if !problems.is_empty() {
        anyhow::bail!("invalid scripts:\n{}", problems.join("\n"));
    }
    let (root, children) = RootSupervisor::start(store.clone(), pipeline);
    tracing::info!(node = %node_id, partitions, "joining the cluster");

    let draining = Arc::new(AtomicBool::new(false));
    let queue_permits = (config.gateway.queue_bytes / 1024).max(1);
    let state = web::Data::new(AppState {
        sources: std::sync::RwLock::new(Arc::new(SourceIndex::new(
            &workspace,
            std::path::Path::new(&config.transform.scripts_dir),
        ))),
        root: root.clone(),
        children: children.clone(),
        store,
        prometheus,
        queue: Arc::new(Semaphore::new(queue_permits)),
        draining: draining.clone(),
        rate_limiter: source_rate_limiter(&config.gateway),
        test_hooks: std::env::var("KEEL_TEST_HOOKS").is_ok_and(|v| v == "1"),
        transforms,
        config: config.clone(),
    });

    let workers = if config.server.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        config.server.workers
    };
    let reload_state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(
                Cors::default()
                    .allow_any_origin()
                    .allowed_methods(["GET", "POST", "OPTIONS"])
                    .allow_any_header()
                    .max_age(3600),
            )
            .configure(http::routes)
    })
    .workers(workers)
    .client_request_timeout(Duration::from_secs(config.server.read_timeout_secs))
    .keep_alive(Duration::from_secs(config.server.keep_alive_secs))
    .disable_signals()
    .shutdown_timeout(config.server.shutdown_timeout_secs)
    .listen(listener)?
    .run();
    let signals_installed = Signals::install();
    tracing::info!(%addr, workers, "listening");

    let handle = server.handle();
    let signals = tokio::spawn(async move {
        let stop = wait_for_signal(signals_installed, &reload_state).await;
        tracing::info!(
            signal = stop,
            "shutting down: no new requests, finishing in-flight commits"
        );
        draining.store(true, Ordering::Relaxed);
        handle.stop(true).await;
    });
    server.await?;
    signals.abort();
    // Every in-flight request waited for its commit; flush anything left regardless.
    let _ = children.gateway_writer().send(FlushNow).await;
    let deadline = Duration::from_secs(config.server.drain_timeout_secs);
    tracing::info!(?deadline, "draining routers and warehouse uploaders");
    match root
        .send(DrainAll { deadline })
        .timeout(deadline + Duration::from_secs(5))
        .await
    {
        Ok(report) if report.abandoned > 0 => tracing::warn!(
            abandoned = report.abandoned,
            "deliveries still running at the drain deadline were abandoned; they are redone after the restart"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "drain did not finish"),
    }
    // Nothing of this node's partitions runs any more: hand them over at once.
    if let Some(keeper) = children.lease_keeper() {
        if let Err(e) = keeper
            .send(LeaveCluster)
            .timeout(Duration::from_secs(config.database.timeout_secs * 2))
            .await
        {
            tracing::warn!(error = %e, "could not leave the cluster; leases expire by themselves");
        }
    }
    tracing::info!("stopped");
    drop(db.cluster);
    Ok(())
}

/// This node's id: `[cluster] node_id`, else `<hostname>:<listen port>` (stable across
/// restarts, and unique among live processes of one host).
fn node_id(config: &KeelSettings, addr: std::net::SocketAddr) -> String {
    if !config.cluster.node_id.is_empty() {
        return config.cluster.node_id.clone();
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", addr.port())
}

/// The signal streams `keel serve` listens to, installed before the server announces
/// itself, so a SIGHUP sent as soon as it listens is a reload, not the default termination.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Self {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }
}

/// Waits for SIGTERM or SIGINT (returned); applies a workspace reload on every SIGHUP
/// meanwhile.
async fn wait_for_signal(signals: Option<Signals>, state: &web::Data<AppState>) -> &'static str {
    let Some(Signals {
        mut term,
        mut int,
        mut hup,
    }) = signals
    else {
        // Without signal handlers the server still stops when the process is killed.
        std::future::pending::<()>().await;
        return "none";
    };
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the workspace");
                match crate::reload::reload(state).await {
                    Ok(report) => tracing::info!(?report, "reload applied"),
                    Err(problems) => tracing::error!(
                        problems = %problems.join("; "),
                        "reload rejected; the running configuration is unchanged"
                    ),
                }
            }
        }
    }
}
