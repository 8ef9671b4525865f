//! `keel`: the command line. `serve` runs the event router, `migrate` applies the schema,
//! `check-config` validates `keel.toml` and the workspace file, printing every problem,
//! `replay` sends a raw backup through the current workspace again.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use keel::boot;

/// mimalloc: the ingest profile spent ~12% in glibc malloc/free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use keel::config::KeelSettings;
use keel::workspace::load_workspace;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Segment-compatible customer-event router"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Server configuration file (TOML).
    #[arg(long, env = "KEEL_CONFIG")]
    config: Option<PathBuf>,
    /// Workspace file (RudderStack workspace JSON: sources, write keys, destinations).
    #[arg(long, env = "KEEL_WORKSPACE")]
    workspace: Option<PathBuf>,
    /// Postgres URL; without it Keel uses a local server or starts an embedded one.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Listen address (default 127.0.0.1:8080; port 0 picks a free one).
        #[arg(long, env = "KEEL_LISTEN")]
        listen: Option<String>,
        /// Log line format on stderr: `human` (default) or `json` (one JSON object a line).
        #[arg(long = "log-format", env = "KEEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[command(flatten)]
        common: Common,
    },
    /// Validate the configuration and workspace; print every error and exit non-zero if any.
    CheckConfig {
        #[command(flatten)]
        common: Common,
    },
    /// Show the cluster: nodes, their partitions and lease ages (read from the database).
    Status {
        #[command(flatten)]
        common: Common,
        /// Print one JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Send the requests of a raw backup (`[backup]`) through the current workspace again,
    /// in their original order per user; `--dry-run` only prints what each destination
    /// would receive.
    Replay {
        #[command(flatten)]
        common: Common,
        /// Backup location: s3://bucket/prefix (AWS_* variables or `[backup]` keys for
        /// credentials and endpoint), gs://…, az://… or file:///path.
        #[arg(long)]
        from: String,
        /// Requests received at or after this time (UTC unless an offset is given).
        #[arg(long)]
        since: String,
        /// Requests received before this time.
        #[arg(long)]
        until: String,
        /// Only requests of this source id (repeatable).
        #[arg(long)]
        source: Vec<String>,
        /// Only to this destination id (repeatable).
        #[arg(long)]
        destination: Vec<String>,
        /// Deliver nothing; print per destination what it would receive.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: print every payload (canonical JSON, one a line).
        #[arg(long, requires = "dry_run")]
        show: bool,
    },
    /// JavaScript transformations and destination scripts.
    Transform {
        #[command(subcommand)]
        command: TransformCommand,
    },
}

#[derive(Subcommand)]
enum TransformCommand {
    /// Run one script over one event as the server would and print the result as JSON
    /// (`keel transform test FILE --event E`), or run destination scripts' case files and
    /// print pass/fail per case (`keel transform test --destination NAME` or `--all`).
    Test {
        /// The script (a user transformation or a destination's transform.js).
        file: Option<PathBuf>,
        /// JSON file with the event (with FILE).
        #[arg(long, requires = "file")]
        event: Option<PathBuf>,
        /// With FILE: a JSON file with the destination (its `config` is what scripts
        /// read). Without FILE: the destination script (folder name) whose cases to run.
        #[arg(long)]
        destination: Option<String>,
        /// Case folder (default: the destination's `cases`).
        #[arg(long, conflicts_with = "file")]
        cases: Option<PathBuf>,
        /// Run the cases of every destination script that has some.
        #[arg(long, conflicts_with_all = ["file", "destination"])]
        all: bool,
        /// Server configuration file (for `[transform]` limits and the scripts folder).
        #[arg(long, env = "KEEL_CONFIG")]
        config: Option<PathBuf>,
    },
}

const DEFAULT_CONFIG: &str = "config/keel.toml";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// `2026-11-23T10:00:00Z  INFO keel::boot: listening addr=… workers=2`.
    Human,
    /// `{"timestamp":…,"level":"INFO","message":"listening","addr":…,"target":…}`.
    Json,
}

fn load_config(common: &Common, listen: Option<String>) -> anyhow::Result<KeelSettings> {
    let (path, explicit) = match &common.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let mut config = KeelSettings::load(&path, explicit)?;
    if let Some(url) = &common.database_url {
        config.database.url = url.clone();
    }
    if let Some(ws) = &common.workspace {
        config.server.workspace = ws.display().to_string();
    }
    if let Some(listen) = listen {
        if listen.parse::<std::net::SocketAddr>().is_err() {
            anyhow::bail!(
                "--listen / KEEL_LISTEN: {listen:?} is not an address like 127.0.0.1:8080"
            );
        }
        config.server.listen = listen;
    }
    Ok(config)
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Event fields at the top level next to `message`, so log pipelines index them.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(match &cli.command {
        Command::Serve { log_format, .. } => *log_format,
        _ => LogFormat::Human,
    });
    let result = match cli.command {
        Command::CheckConfig { common } => check_config(&common),
        Command::Transform {
            command:
                TransformCommand::Test {
                    file,
                    event,
                    destination,
                    cases,
                    all,
                    config,
                },
        } => {
            let common = Common {
                config,
                workspace: None,
                database_url: None,
            };
            load_config(&common, None).and_then(|c| match file {
                Some(file) => {
                    let Some(event) = event else {
                        anyhow::bail!("keel transform test FILE needs --event EVENT.json");
                    };
                    keel::transform_cli::run(
                        &c,
                        &keel::transform_cli::TestRun {
                            file,
                            event,
                            destination: destination.map(PathBuf::from),
                        },
                    )
                }
                None => keel::destination_cases::run(
                    &c,
                    &keel::destination_cases::CaseRun {
                        destinations: destination.into_iter().collect(),
                        cases,
                        all,
                    },
                )
                .map(|_| ()),
            })
        }
        Command::Status { common, json } => actix_web::rt::System::new().block_on(async move {
            let config = load_config(&common, None)?;
            // Never start an embedded cluster just to look: the local default or the URL.
            let url = if config.database.url.is_empty() {
                format!("{}/keel", config.database.local_url.trim_end_matches('/'))
            } else {
                config.database.url.clone()
            };
            let text = keel::status::run(&url, config.cluster.lease_ttl_secs, json).await?;
            print!("{text}");
            if json {
                println!();
            }
            Ok(())
        }),
        Command::Replay {
            common,
            from,
            since,
            until,
            source,
            destination,
            dry_run,
            show,
        } => actix_web::rt::System::new().block_on(async move {
            let config = load_config(&common, None)?;
            let ws = load_workspace(std::path::Path::new(&config.server.workspace))?;
            let args = keel::replay::ReplayArgs {
                from,
                since: keel::replay::parse_time(&since)?,
                until: keel::replay::parse_time(&until)?,
                sources: source,
                destinations: destination,
                dry_run,
                show,
            };
            let text = keel::replay::run(&config, &ws, &args).await?;
            print!("{text}");
            Ok(())
        }),
        Command::Migrate { common } => actix_web::rt::System::new().block_on(async move {
            let config = load_config(&common, None)?;
            let db = boot::database(&config).await?;
            boot::migrate(&db.url).await.map(|_| ())
        }),
        Command::Serve { common, listen, .. } => {
            let loaded = load_config(&common, listen).and_then(|config| {
                let ws = load_workspace(std::path::Path::new(&config.server.workspace))?;
                Ok((config, ws))
            });
            match loaded {
                Err(e) => Err(e),
                Ok((config, ws)) => actix_web::rt::System::new().block_on(boot::serve(config, ws)),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(common: &Common) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    let config = match load_config(common, None) {
        Ok(c) => Some(c),
        Err(e) => {
            errors.push(format!("{e:#}"));
            None
        }
    };
    let ws_path = config.as_ref().map_or_else(
        || {
            common
                .workspace
                .clone()
                .unwrap_or_else(|| PathBuf::from("config/workspace.json"))
        },
        |c| PathBuf::from(&c.server.workspace),
    );
    let scripts_dir = PathBuf::from(
        config
            .as_ref()
            .map_or("transformer-scripts", |c| c.transform.scripts_dir.as_str()),
    );
    let (ws, problems) =
        keel::transform_cli::check_workspace(config.as_ref(), &ws_path, &scripts_dir);
    errors.extend(problems);
    if let (Some(ws), true) = (ws, errors.is_empty()) {
        let dests: usize = ws.sources.iter().map(|s| s.destinations.len()).sum();
        println!(
            "ok: {} source(s), {} destination(s) in {}",
            ws.sources.len(),
            dests,
            ws_path.display()
        );
    }
    if errors.is_empty() {
        return Ok(());
    }
    for e in &errors {
        eprintln!("{e}");
    }
    anyhow::bail!("{} configuration error(s)", errors.len())
}
