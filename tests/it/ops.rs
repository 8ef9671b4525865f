//! Operations surface: the telemetry contract (every metric a Grafana dashboard queries is
//! exported by a running Keel, named in `telemetry.rs` and documented in docs/metrics.md), the
//! alert rules (promtool), a real Prometheus scraping a real Keel and parsing every dashboard
//! query, the backlog sampler through a Postgres outage, the docker-compose stack definition,
//! and JSON logs that leak no secret.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::sink::{Sink, SinkMode};
use crate::common::*;

/// Every dashboard file under `grafana/dashboards`, parsed.
fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = repo_root().join("grafana/dashboards");
    let mut out: Vec<(PathBuf, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read dashboard");
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every PromQL expression of a dashboard: panel targets (rows included) and the metric
/// selector of `label_values(metric, label)` template variables.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn panels(v: &Value, out: &mut Vec<String>) {
        for p in v.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_owned());
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let q = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .unwrap_or_default();
        if let Some(args) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let metric = args.rsplit_once(',').map_or(args, |(m, _)| m);
            out.push(metric.trim().to_owned());
        }
    }
    out
}

/// The metric names a PromQL expression selects: identifiers outside strings, label
/// matchers (`{…}`), ranges (`[…]`) and grouping lists (`by (…)`), that are neither a
/// function nor a keyword.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "inf",
        "nan",
    ];
    // Aggregation operators may be followed by `by (…)`/`without (…)` instead of `(`.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let (mut i, mut skip_list) = (0, false);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_list => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                skip_list = false;
                i += 1;
            }
            '0'..='9' | '.' => {
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || chars[i] == '.'
                        || (matches!(chars[i], '+' | '-') && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let ident: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                let lower = ident.to_ascii_lowercase();
                if AGGREGATIONS.contains(&lower.as_str()) {
                    // Never a metric name here, whatever follows.
                } else if KEYWORDS.contains(&lower.as_str()) {
                    skip_list = matches!(
                        lower.as_str(),
                        "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                    );
                } else if next != Some(&'(') {
                    names.insert(ident);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// `# TYPE name kind` lines of a `/metrics` text.
fn exported_types(metrics: &str) -> HashMap<String, String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect()
}

/// The value of the sample `name{labels}` (labels exactly as rendered), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The exported metric a dashboard name refers to (histogram series map to their base).
fn exported_base<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        name.strip_suffix(suffix)
            .filter(|base| types.get(*base).is_some_and(|k| k == "histogram"))
    })
}

#[test]
fn promql_metric_names_skips_functions_labels_ranges_and_groupings() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.99, sum by (destination, le) (rate(keel_a_bucket{destination=~"$destination", x="keel_no"}[$__rate_interval]))) / clamp_min(sum without (instance) (keel_b_total offset 5m), 1e-9) > bool 2 and on (instance) up"#,
    );
    let expected: BTreeSet<String> = ["keel_a_bucket", "keel_b_total", "up"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, expected);
}

async fn wait_for_metrics(keel: &Keel, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = keel.metrics().await;
        if ok(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A pipeline with three webhook destinations — one healthy, one that fails with 503 and
/// then recovers (retries), one that refuses user `bad` (DLQ) — and a POSTGRES warehouse
/// (database `wh`), fed 21 events, 5 of them from `bad` and one that `hook` filters out;
/// returns once every sink has what it should.
async fn keel_with_retries_and_dlq(db: &TestDb, wh: &TestDb) -> (Keel, [Sink; 3]) {
    let ok = Sink::start(SinkMode::Ok).await;
    let flaky = Sink::start(SinkMode::Status(503)).await;
    let reject = Sink::start(SinkMode::RejectUser("bad".into())).await;
    let mut opts = fast_router(KeelOptions::new(db));
    opts.workspace = workspace_with_webhooks(&[
        ("hook", &ok.url, json!({})),
        ("flaky", &flaky.url, json!({})),
        ("reject", &reject.url, json!({})),
    ]);
    // A transformation, so the script panels have data.
    opts.workspace["sources"][0]["destinations"][0]["transformations"] = json!([{
        "name": "enrich",
        "file": repo_root().join("tests/scripts/enrich.js").display().to_string()
    }]);
    opts.workspace["sources"][0]["destinations"]
        .as_array_mut()
        .expect("destinations")
        .push(json!({"id": "wh", "name": "Warehouse", "enabled": true,
            "config": {"host": "127.0.0.1", "port": 5432, "database": wh.name, "user": "postgres",
                       "uploadInterval": 1},
            "destinationDefinition": {"name": "POSTGRES"}}));
    let keel = Keel::start(opts).await;
    let mut events: Vec<Value> = (0..20)
        .map(|i| {
            let user = if i % 4 == 0 { "bad" } else { "good" };
            json!({"type": "track", "userId": user, "event": "Step", "messageId": format!("m{i}")})
        })
        .collect();
    // Filtered out of `hook` by its integrations, delivered to the other two.
    events.push(
        json!({"type": "identify", "userId": "good", "messageId": "only-two",
                       "integrations": {"Hook hook": false}}),
    );
    send_batches(&keel, &events, 10).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while flaky.received().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the failing sink was never called"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flaky.set_mode(SinkMode::Ok);
    assert_eq!(ok.wait_delivered(20, Duration::from_secs(20)).await, 20);
    assert_eq!(flaky.wait_delivered(21, Duration::from_secs(20)).await, 21);
    assert_eq!(reject.wait_delivered(16, Duration::from_secs(20)).await, 16);
    (keel, [ok, flaky, reject])
}

#[tokio::test]
async fn dashboards_query_only_metrics_a_running_keel_exports() {
    let db = TestDb::create().await;
    let wh = TestDb::create().await;
    let (keel, _sinks) = keel_with_retries_and_dlq(&db, &wh).await;
    // The backlog sampler runs every 5 s: wait until it saw the dead-lettered jobs.
    let text = wait_for_metrics(&keel, "the DLQ gauge and the warehouse load", |t| {
        sample(t, r#"keel_router_dlq_jobs{destination="reject"}"#) == Some(5.0)
            && sample(t, r#"keel_warehouse_events_loaded_total{destination="wh"}"#) == Some(21.0)
    })
    .await;
    // The workload really produced what the dashboards show.
    for (series, min) in [
        (
            r#"keel_router_deliveries_total{destination="flaky",outcome="retry"}"#,
            1.0,
        ),
        (
            r#"keel_router_deliveries_total{destination="reject",outcome="dead"}"#,
            5.0,
        ),
        (
            r#"keel_router_deliveries_total{destination="hook",outcome="delivered"}"#,
            20.0,
        ),
        (
            r#"keel_gateway_requests_total{endpoint="batch",outcome="200",source="src_test"}"#,
            3.0,
        ),
        (
            r#"keel_processor_filtered_total{destination="hook",outcome="excluded by the event's integrations"}"#,
            1.0,
        ),
        ("keel_process_resident_memory_bytes", 1e6),
        ("keel_store_pool_max_connections", 1.0),
    ] {
        let v = sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(v >= min, "{series} = {v}, expected at least {min}");
    }
    for series in [
        r#"keel_router_circuit_open{destination="flaky"}"#,
        r#"keel_router_throttled_total{destination="hook"}"#,
        r#"keel_supervisor_restarts_total{actor="router"}"#,
        r#"keel_router_pending_jobs{destination="hook"}"#,
        "keel_processor_lag_seconds",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
    }

    let types = exported_types(&text);
    let contract: BTreeSet<&str> = keel_actors::telemetry::ALL.iter().copied().collect();
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    let all = dashboards();
    assert_eq!(all.len(), 3, "Overview, Destinations, Internals");
    for (path, dash) in &all {
        let queries = dashboard_queries(dash);
        assert!(queries.len() >= 8, "{} has few queries", path.display());
        for q in &queries {
            let names = promql_metric_names(q);
            if names.is_empty() {
                problems.push(format!("{}: no metric in {q}", path.display()));
            }
            for name in names {
                match exported_base(&name, &types) {
                    None => problems.push(format!(
                        "{}: {name} is not exported by /metrics",
                        path.display()
                    )),
                    Some(base) if !contract.contains(base) => problems.push(format!(
                        "{}: {base} is not named in telemetry.rs",
                        path.display()
                    )),
                    Some(base) => {
                        used.insert(base.to_owned());
                    }
                }
            }
        }
        for panel in dash["panels"].as_array().expect("panels") {
            if panel["type"] != "row" {
                assert_eq!(
                    panel["datasource"]["uid"],
                    "keel-prometheus",
                    "{}: panel {} must use the provisioned datasource",
                    path.display(),
                    panel["title"]
                );
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(used.len() >= 30, "dashboards use only {used:?}");
    let provisioning = std::fs::read_to_string(
        repo_root().join("grafana/provisioning/datasources/prometheus.yml"),
    )
    .expect("datasource provisioning");
    assert!(provisioning.contains("uid: keel-prometheus"));
}

#[test]
fn docs_metrics_list_is_exactly_the_contract() {
    let doc =
        std::fs::read_to_string(repo_root().join("docs/metrics.md")).expect("docs/metrics.md");
    let missing: Vec<&str> = keel_actors::telemetry::ALL
        .iter()
        .copied()
        .filter(|name| !doc.contains(&format!("| `{name}` |")))
        .collect();
    assert!(missing.is_empty(), "docs/metrics.md lacks {missing:?}");
    // And names nothing the code does not export.
    let documented: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `keel_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let stale: Vec<&&str> = documented
        .iter()
        .filter(|n| !keel_actors::telemetry::ALL.contains(&format!("keel_{n}").as_str()))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/metrics.md names metrics telemetry.rs does not: {stale:?}"
    );
    for name in keel_actors::telemetry::ALL {
        assert!(
            name.starts_with("keel_") && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{name} breaks keel_<component>_<what>_<unit>"
        );
    }
}

/// A binary from a Debian package; fails the test, naming the package, when it is absent.
fn debian_binary(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` not found: install the Debian package `{package}` \
             (apt-get install -y --no-install-recommends {package}); scripts/test.sh does"
        )
    })
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_and_scrape_config_pass_promtool() {
    let promtool = debian_binary("promtool", "prometheus");
    let root = repo_root().join("prometheus");
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(root.join("rules/keel-alerts.yml")),
    );
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    run_ok(
        Command::new(&promtool)
            .args(["check", "config", "--syntax-only"])
            .arg(root.join("prometheus.yml")),
    );
    // Alerts fire on synthetic series as the rules' comments say.
    let out = run_ok(
        Command::new(&promtool)
            .current_dir(root.join("tests"))
            .args(["test", "rules", "keel-alerts.test.yml"]),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A Prometheus server process, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Prometheus {
    /// Starts the Debian package's `prometheus` scraping `target` (host:port) every second
    /// with Keel's alert rules loaded, and waits until it is ready.
    async fn start(target: &str) -> Prometheus {
        let binary = debian_binary("prometheus", "prometheus");
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = repo_root().join("prometheus/rules");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}/*.yml\n\
             scrape_configs:\n  - job_name: keel\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write config");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let prom = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http().get(format!("{}/-/ready", prom.base)).send().await {
                if r.status().is_success() {
                    return prom;
                }
            }
            let log = std::fs::read_to_string(prom._dir.path().join("prometheus.log"))
                .unwrap_or_default();
            assert!(Instant::now() < deadline, "prometheus not ready:\n{log}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let res = http()
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .expect("prometheus api");
        res.json().await.expect("prometheus json")
    }
}

#[tokio::test]
async fn prometheus_scrapes_keel_and_parses_every_dashboard_query() {
    let db = TestDb::create().await;
    let keel = Keel::start(fast_router(KeelOptions::new(&db))).await;
    send_batches(
        &keel,
        &[json!({"type": "track", "userId": "u", "event": "E"})],
        1,
    )
    .await;
    let prom = Prometheus::start(keel.base.trim_start_matches("http://")).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let series = loop {
        let doc = prom
            // Zero series exist from the start: the one with the request sent above.
            .api(
                "/api/v1/query",
                &[("query", "keel_gateway_requests_total > 0")],
            )
            .await;
        let result = doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !result.is_empty() {
            break result;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never stored keel_gateway_requests_total: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(series[0]["metric"]["job"], "keel");
    assert_eq!(series[0]["metric"]["source"], "src_test");
    assert_eq!(series[0]["value"][1], "1");

    // The alert rules loaded and evaluate against real series without errors.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let doc = prom.api("/api/v1/rules", &[]).await;
        let rules: Vec<Value> = doc["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert_eq!(rules.len(), 10, "{doc}");
        let bad: Vec<&Value> = rules.iter().filter(|r| r["health"] != "ok").collect();
        if bad.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "rules not healthy: {bad:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every dashboard query is valid PromQL for this Prometheus (Grafana variables filled in).
    for (path, dash) in dashboards() {
        for q in dashboard_queries(&dash) {
            let q = q
                .replace("$__rate_interval", "1m")
                .replace("$destination", ".*");
            let doc = prom.api("/api/v1/query", &[("query", &q)]).await;
            assert_eq!(doc["status"], "success", "{}: {q}: {doc}", path.display());
        }
    }
}

/// The Compose command of this machine: `docker compose`, else `docker-compose`; `None`
/// (with the reason printed) when there is no docker client at all.
fn compose_command() -> Option<Command> {
    let has = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(Command::new("docker").args(["compose", "version"])) {
        let mut c = Command::new("docker");
        c.arg("compose");
        return Some(c);
    }
    if has(Command::new("docker-compose").arg("version")) {
        return Some(Command::new("docker-compose"));
    }
    if !has(Command::new("docker").arg("--version")) {
        eprintln!("SKIPPED: no docker client on this machine, docker-compose.yml not validated");
        return None;
    }
    panic!(
        "the docker client has no compose plugin and `docker-compose` is missing: install \
         the Debian package `docker-compose` (scripts/test.sh does)"
    );
}

#[test]
fn compose_file_defines_the_whole_stack_and_validates() {
    let root = repo_root();
    let Some(mut compose) = compose_command() else {
        return;
    };
    let out = run_ok(
        compose
            .current_dir(&root)
            .args(["-f", "docker-compose.yml", "config"]),
    );
    for needle in [
        "keel:",
        "postgres:",
        "prometheus:",
        "grafana:",
        "condition: service_healthy",
        "http://127.0.0.1:8080/ready",
        "/etc/grafana/provisioning",
        "/etc/prometheus/rules",
    ] {
        assert!(
            out.contains(needle),
            "compose config lacks {needle}:\n{out}"
        );
    }
    for mounted in [
        "grafana/provisioning/datasources",
        "grafana/provisioning/dashboards",
        "grafana/dashboards/overview.json",
        "prometheus/prometheus.yml",
        "prometheus/rules",
        "config/workspace.json",
        "Dockerfile",
        ".dockerignore",
    ] {
        assert!(root.join(mounted).exists(), "{mounted} is missing");
    }
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("AS builder") && dockerfile.contains("cargo build --release"));
}

/// Reads a child's stderr lines on a thread, sending each one on.
fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn keel_command(dir: &Path, workspace: &Value, db: &TestDb) -> Command {
    let ws = dir.join("workspace.json");
    std::fs::write(&ws, serde_json::to_vec(workspace).expect("json")).expect("workspace");
    std::fs::write(dir.join("keel.toml"), "").expect("config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.arg("serve")
        .arg("--workspace")
        .arg(&ws)
        .arg("--config")
        .arg(dir.join("keel.toml"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("KEEL_LOG_FORMAT")
        .env("KEEL_LOG", "info")
        .env("DATABASE_URL", &db.url)
        .env("KEEL_ROUTER__POLL_INTERVAL_MS", "50")
        .env("KEEL_ALLOW_PRIVATE_TARGETS", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_without_secrets() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::RejectUser("bad".into())).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ws = workspace_with_webhooks(&[("reject", &sink.url, json!({}))]);
    let mut child = keel_command(dir.path(), &ws, &db)
        .args(["--log-format", "json"])
        .spawn()
        .expect("spawn keel");
    let rx = lines_of(&mut child);
    let mut lines: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no `listening` line; got:\n{}", lines.join("\n")));
        lines.push(line.clone());
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
        if v["message"] == "listening" {
            break v["addr"].as_str().expect("addr field").to_owned();
        }
    };
    let base = format!("http://{addr}");
    let marker = "payload-marker-7f3a";
    let res = http()
        .post(format!("{base}/v1/batch"))
        .header("Authorization", basic(WRITE_KEY))
        .json(&json!({"batch": [
            {"type": "track", "userId": "bad", "event": "E", "properties": {"secret": marker}},
            {"type": "identify", "userId": "good", "traits": {"email": marker}}
        ]}))
        .send()
        .await
        .expect("ingest");
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(sink.wait_delivered(1, Duration::from_secs(20)).await, 1);
    // The refused event is dead-lettered and logged as such, with the destination as a field.
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no dead-letter line; got:\n{}", lines.join("\n")));
        lines.push(line.clone());
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        if v["message"] == "job dead-lettered" {
            break v;
        }
    };
    assert_eq!(dead["destination"], "reject", "{dead}");
    assert_eq!(dead["level"], "INFO");
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        lines.push(line);
    }
    let log = lines.join("\n");
    assert!(!log.contains(WRITE_KEY), "write key logged:\n{log}");
    assert!(!log.contains(marker), "event payload logged:\n{log}");

    // An unknown format is refused up front, naming the accepted ones.
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["serve", "--log-format", "xml"])
        .output()
        .expect("run keel");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("human") && err.contains("json"), "{err}");
}

#[tokio::test]
async fn log_format_env_var_selects_json() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = keel_command(dir.path(), &workspace(), &db)
        .env("KEEL_LOG_FORMAT", "json")
        .spawn()
        .expect("spawn keel");
    let rx = lines_of(&mut child);
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a log line");
    let _ = child.kill();
    let _ = child.wait();
    let v: Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    assert_eq!(v["level"], "INFO", "{v}");
}

#[tokio::test]
async fn backlog_sampler_counts_failed_samples_during_an_outage_and_recovers() {
    use crate::common::proxy::{Mode, Proxy};
    let db = TestDb::create().await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut opts = KeelOptions::new(&db).env("KEEL_DATABASE__TIMEOUT_SECS", "1");
    opts.database_url = Some(db.url_via(&proxy.addr));
    let keel = Keel::start(opts).await;
    let samples = |text: &str, outcome: &str| {
        sample(
            text,
            &format!("keel_telemetry_samples_total{{outcome=\"{outcome}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let text = wait_for_metrics(&keel, "a first sample", |t| samples(t, "ok") >= 1.0).await;
    assert_eq!(samples(&text, "failed"), 0.0, "{text}");

    proxy.set(Mode::Refuse);
    let text = wait_for_metrics(&keel, "a failed sample", |t| samples(t, "failed") >= 1.0).await;
    let ok_before = samples(&text, "ok");
    proxy.set(Mode::Pass);
    // The next sample comes at the normal pace (not slowed by the failed one's wait).
    wait_for_metrics(&keel, "a sample after the outage", |t| {
        samples(t, "ok") > ok_before
    })
    .await;
}

/// A fresh Keel, before any traffic, already exports every series the shipped dashboards
/// query (zero for the label sets it knows: its destinations, scripts, sources, outcomes),
/// so a new deployment's panels show 0 rather than "No data".
#[tokio::test]
async fn a_fresh_keel_exports_every_series_the_dashboards_query() {
    let db = TestDb::create().await;
    let wh = TestDb::create().await;
    let mut opts = KeelOptions::new(&db);
    opts.workspace = json!({"sources": [{"id": "src_fresh", "name": "Fresh", "writeKey": WRITE_KEY, "enabled": true,
        "destinations": [
            {"id": "hook", "name": "Hook", "enabled": true, "config": {"webhookUrl": "http://127.0.0.1:9/x"},
             "destinationDefinition": {"name": "WEBHOOK"}},
            {"id": "am", "name": "Amplitude", "enabled": true, "config": {"apiKey": "am-key-123456"},
             "destinationDefinition": {"name": "AM"}},
            {"id": "wh", "name": "Warehouse", "enabled": true,
             "config": {"host": "127.0.0.1", "port": "5432", "database": wh.name, "user": "postgres"},
             "destinationDefinition": {"name": "POSTGRES"}}]}]});
    let keel = Keel::start(opts).await;
    let text = keel.metrics().await;
    let types = exported_types(&text);
    let mut missing = BTreeSet::new();
    for (path, dash) in &dashboards() {
        for q in dashboard_queries(dash) {
            for name in promql_metric_names(&q) {
                if exported_base(&name, &types).is_none() {
                    missing.insert(format!("{}: {name}", path.display()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not exported before traffic:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}
