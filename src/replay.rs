//! `keel replay`: reads a raw backup (see `keel_actors::backup`) and sends its requests
//! through the current workspace again, in their original order (`gw_jobs` id order, which
//! is each user's order). Without `--dry-run` the requests are stored in Keel's database
//! like accepted ones (marked so the messageId dedup window never drops them, and routed
//! only to `--destination`s when given); a running Keel routes them to `rt_jobs`/`wh_jobs`
//! and delivers. `--dry-run` writes nothing and prints, per destination, what it would
//! receive — counts, and with `--show` every payload as canonical JSON — the same output
//! for the same backup and workspace. Progress goes to stderr: a bar with rate and ETA on a
//! terminal, plain lines otherwise.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, NaiveDate, Utc};
use keel_actors::backup::{self, BackupRecord};
use keel_actors::partition::{ordering_key, partition_of};
use keel_actors::store::{PoolConfig, ReplayInsert, Store};
use serde_json::{Map, Value};

use crate::config::KeelSettings;
use crate::workspace::Workspace;

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayArgs {
    /// Backup location URL.
    pub from: String,
    /// Requests received at or after this.
    pub since: DateTime<Utc>,
    /// Requests received before this.
    pub until: DateTime<Utc>,
    /// Only these source ids (empty: all).
    pub sources: Vec<String>,
    /// Only these destination ids (empty: all of each source's).
    pub destinations: Vec<String>,
    /// Deliver nothing; print what each destination would receive.
    pub dry_run: bool,
    /// With `dry_run`: print the payloads too.
    pub show: bool,
}

/// `2026-12-06T10:00:00Z`, `2026-12-06T10:00:00+01:00`, `2026-12-06 10:00` or `2026-12-06`.
pub fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    bail!("{s:?} is not a time (2026-12-06T10:00:00Z, 2026-12-06 10:00 or 2026-12-06; UTC unless an offset is given)")
}

/// Progress on stderr: an indicatif bar on a terminal, else a plain line a second.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>9} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(what);
            b
        });
        Self {
            bar,
            what,
            total,
            done: 0,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done as f64 / secs;
        let eta = if rate > 0.0 {
            format!(
                "{:.0}s",
                (self.total.saturating_sub(self.done)) as f64 / rate
            )
        } else {
            "?".into()
        };
        format!(
            "replay: {} {}/{} ({rate:.0}/s, eta {eta})",
            self.what, self.done, self.total
        )
    }

    fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(b) => b.inc(n),
            None => {
                if self.last_line.elapsed() >= Duration::from_secs(1) {
                    self.last_line = Instant::now();
                    eprintln!("{}", self.line());
                }
            }
        }
    }

    fn finish(self) {
        match self.bar {
            Some(b) => b.finish(),
            None => eprintln!("{}", self.line()),
        }
    }
}

/// Every record of the backup at `from` received in `[since, until)` from the wanted
/// sources, each once, in id order, each event once per (source, messageId).
async fn read_backup(
    config: &KeelSettings,
    args: &ReplayArgs,
) -> anyhow::Result<Vec<BackupRecord>> {
    let options = config.backup.options(
        Duration::from_secs_f64(config.router.timeout_secs),
        Duration::from_secs_f64(config.router.connect_timeout_secs),
    );
    let settings = backup::location(&args.from, &options)?;
    let store = settings.open().context("opening the backup location")?;
    let objects = backup::list_objects(store.as_ref(), &settings, args.since, args.until)
        .await
        .with_context(|| format!("listing {}", args.from))?;
    let mut progress = Progress::new("objects", objects.len() as u64);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let sources: HashSet<&str> = args.sources.iter().map(String::as_str).collect();
    for o in &objects {
        for r in backup::read_object(store.as_ref(), &o.path).await? {
            let wanted = r.received_at >= args.since
                && r.received_at < args.until
                && (sources.is_empty() || sources.contains(r.source_id.as_str()));
            if wanted && seen.insert(r.id) {
                out.push(r);
            }
        }
        progress.inc(1);
    }
    progress.finish();
    out.sort_by_key(|r| r.id);
    // A client's retry was stored (and backed up) again, and the processor dropped its
    // events as duplicates; the replay does the same: each (source, messageId) once, the
    // first one kept.
    let mut seen_ids: HashSet<(String, String)> = HashSet::new();
    for r in &mut out {
        let source = r.source_id.clone();
        r.events.retain(|e| {
            let head: Map<String, Value> = serde_json::from_str(e.get()).unwrap_or_default();
            match head.get("messageId").and_then(Value::as_str) {
                Some(m) => seen_ids.insert((source.clone(), m.to_owned())),
                None => true,
            }
        });
    }
    out.retain(|r| !r.events.is_empty());
    Ok(out)
}

/// Canonical JSON: object keys sorted at every level, no spaces.
fn canonical(v: &Value) -> String {
    // serde_json may keep insertion order (preserve_order): the keys are sorted here.
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    write(&m[*k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    write(v, &mut s);
    s
}

fn check_ids(ws: &Workspace, args: &ReplayArgs) -> anyhow::Result<()> {
    for s in &args.sources {
        if !ws.sources.iter().any(|x| &x.id == s) {
            bail!("--source {s:?} is not a source of the workspace");
        }
    }
    for d in &args.destinations {
        if !ws
            .sources
            .iter()
            .any(|s| s.destinations.iter().any(|x| &x.id == d))
        {
            bail!("--destination {d:?} is not a destination of the workspace");
        }
    }
    Ok(())
}

/// Runs `keel replay` and returns what it prints on stdout.
pub async fn run(
    config: &KeelSettings,
    ws: &Workspace,
    args: &ReplayArgs,
) -> anyhow::Result<String> {
    if args.since >= args.until {
        bail!("--since must be before --until");
    }
    check_ids(ws, args)?;
    let records = read_backup(config, args).await?;
    let known: HashSet<&str> = ws.sources.iter().map(|s| s.id.as_str()).collect();
    let skipped = records
        .iter()
        .filter(|r| !known.contains(r.source_id.as_str()))
        .count();
    let records: Vec<BackupRecord> = records
        .into_iter()
        .filter(|r| known.contains(r.source_id.as_str()))
        .collect();
    let events: usize = records.iter().map(|r| r.events.len()).sum();
    let only = (!args.destinations.is_empty()).then(|| args.destinations.clone());
    let mut out = String::new();
    if args.dry_run {
        let pool = crate::boot::start_transforms(config)?;
        let env = crate::config::build_env(config, Some(pool));
        let routing = crate::workspace::routing_table(
            ws,
            &env,
            std::path::Path::new(&config.server.workspace),
        )?;
        let requests: Vec<(String, Vec<Box<serde_json::value::RawValue>>)> = records
            .into_iter()
            .map(|r| (r.source_id, r.events))
            .collect();
        let preview = keel_actors::processor::preview(&routing, &requests, only.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        out.push_str(&format!(
            "dry run: {} requests, {events} events received {} .. {}{}\n",
            requests.len(),
            args.since.to_rfc3339(),
            args.until.to_rfc3339(),
            if skipped > 0 {
                format!(" ({skipped} requests of sources not in the workspace skipped)")
            } else {
                String::new()
            }
        ));
        for (id, p) in &preview {
            out.push_str(&format!(
                "{id} ({}): {} payloads, {} dead-lettered",
                p.kind,
                p.payloads.len(),
                p.dead.len()
            ));
            for (reason, n) in &p.filtered {
                out.push_str(&format!(", {n} filtered ({reason})"));
            }
            out.push('\n');
            if args.show {
                for payload in &p.payloads {
                    let v: Value =
                        serde_json::from_str(payload).unwrap_or(Value::String(payload.clone()));
                    out.push_str("  ");
                    out.push_str(&canonical(&v));
                    out.push('\n');
                }
                for d in &p.dead {
                    out.push_str(&format!("  dead: {d}\n"));
                }
            }
        }
        return Ok(out);
    }
    let url = if config.database.url.is_empty() {
        format!("{}/keel", config.database.local_url.trim_end_matches('/'))
    } else {
        config.database.url.clone()
    };
    crate::boot::migrate(&url).await?;
    let store = Store::connect(
        &url,
        &PoolConfig {
            max_size: 2,
            timeout: Duration::from_secs(config.database.timeout_secs.max(5)),
        },
    )?;
    let partitions = store
        .cluster_init(i32::try_from(config.cluster.partitions).unwrap_or(16))
        .await? as u32;
    let mut progress = Progress::new("requests", records.len() as u64);
    let mut batch: Vec<ReplayInsert> = Vec::new();
    let mut stored = 0usize;
    for r in &records {
        // Split by partition with this database's partition count, request order kept.
        let mut parts: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
        let mut order: Vec<i32> = Vec::new();
        for e in &r.events {
            let head: Map<String, Value> = serde_json::from_str(e.get()).unwrap_or_default();
            let p = partition_of(&ordering_key(&head), partitions);
            if !parts.contains_key(&p) {
                order.push(p);
            }
            parts.entry(p).or_default().push(e.get());
        }
        for p in order {
            let list = &parts[&p];
            batch.push(ReplayInsert {
                source_id: r.source_id.clone(),
                partition: p,
                event_count: i32::try_from(list.len()).unwrap_or(i32::MAX),
                payload: format!("[{}]", list.join(",")),
            });
        }
        if batch.len() >= 500 {
            stored += batch.len();
            store
                .insert_replayed(std::mem::take(&mut batch), only.clone())
                .await?;
        }
        progress.inc(1);
    }
    if !batch.is_empty() {
        stored += batch.len();
        store.insert_replayed(batch, only.clone()).await?;
    }
    progress.finish();
    out.push_str(&format!(
        "replayed {} requests ({events} events) as {stored} stored rows; the running Keel routes them{}\n",
        records.len(),
        if skipped > 0 {
            format!(" ({skipped} requests of sources not in the workspace skipped)")
        } else {
            String::new()
        }
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_canonical_json() {
        assert_eq!(
            parse_time("2026-12-06").unwrap().to_rfc3339(),
            "2026-12-06T00:00:00+00:00"
        );
        assert_eq!(
            parse_time("2026-12-06T10:00:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-12-06T09:00:00+00:00"
        );
        assert!(parse_time("yesterday").is_err());
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":1,"y":2}],"c":null}}"#).unwrap();
        assert_eq!(
            canonical(&v),
            r#"{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}"#
        );
    }
}
