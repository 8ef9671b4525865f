//! `keel transform test`: runs one script over one event the way the server does (same
//! pool, limits and runtime functions) and prints the result as JSON on stdout (an event,
//! an array, or `null`), the script's `log()` lines on stderr. A script that throws, times
//! out or exceeds its heap prints the error and its stack on stderr and fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use keel_actors::transform::{
    load_libraries, CallItem, CallResults, ItemResult, Script, ScriptKind, TransformPool,
};
use serde_json::{json, Map, Value};

use crate::config::KeelSettings;

/// Checks the workspace file `file`: both passes (structure, then every destination's
/// settings, once) and then compiles every script it uses (transformations and destination
/// scripts), checking their exports. Without a configuration the scripts folder is
/// `scripts_dir` and scripts are not run. Returns the workspace when it is valid, and one
/// `file: problem` line per problem.
pub fn check_workspace(
    config: Option<&KeelSettings>,
    file: &Path,
    scripts_dir: &Path,
) -> (Option<crate::workspace::Workspace>, Vec<String>) {
    let env = match config {
        Some(config) => {
            let mut settings = config.transform.config(config.allow_private_targets);
            settings.isolates = 1;
            match TransformPool::start(settings) {
                Ok(pool) => crate::config::build_env(config, Some(pool)),
                Err(e) => return (None, vec![format!("cannot start V8: {e}")]),
            }
        }
        None => keel_actors::destinations::BuildEnv {
            scripts_dir: scripts_dir.to_owned(),
            workspace_dir: crate::workspace::workspace_dir(file),
            ..Default::default()
        },
    };
    match crate::workspace::check_workspace(file, &env) {
        Ok((ws, table)) => (Some(ws), futures::executor::block_on(table.check_scripts())),
        Err(e) => (
            None,
            e.problems
                .iter()
                .map(|p| format!("{}: {p}", e.file))
                .collect(),
        ),
    }
}

/// What to run.
pub struct TestRun {
    /// The script.
    pub file: PathBuf,
    /// A JSON file holding one event.
    pub event: PathBuf,
    /// A JSON file holding the destination (workspace or RudderStack shape), optional.
    pub destination: Option<PathBuf>,
}

fn read_json(path: &Path, what: &str) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the {what}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// RudderStack's destination object (`ID`, `Name`, `Config`, `DestinationDefinition`) from
/// either that shape or the workspace's (`id`, `name`, `config`, `destinationDefinition`).
pub fn rudder_destination(d: &Value) -> Value {
    if d.get("Config").is_some() {
        return d.clone();
    }
    json!({
        "ID": d.get("id").cloned().unwrap_or(Value::Null),
        "Name": d.get("name").cloned().unwrap_or(Value::Null),
        "Enabled": d.get("enabled").cloned().unwrap_or(Value::Bool(true)),
        "Config": d.get("config").cloned().unwrap_or_else(|| json!({})),
        "DestinationDefinition": {
            "Name": d.pointer("/destinationDefinition/name").cloned().unwrap_or(Value::Null),
            "DisplayName": d.pointer("/destinationDefinition/displayName").cloned().unwrap_or(Value::Null),
            "Config": d.pointer("/destinationDefinition/config").cloned().unwrap_or_else(|| json!({})),
        },
    })
}

/// The script's role from its exports: `process` makes a destination script.
fn kind_of(source: &str) -> ScriptKind {
    let exports_process = source.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("export")
            && (l.contains("function process")
                || l.contains(" process ")
                || l.contains("process,")
                || l.contains("process }"))
    });
    let exports_transform = source.contains("transformEvent") || source.contains("transformBatch");
    if exports_process && !exports_transform {
        ScriptKind::Destination
    } else {
        ScriptKind::Transformation
    }
}

/// What one run of a script gave: its output (an event, an array, or `null`), the lines
/// it logged, and the error it threw, if it did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScriptRun {
    /// The result (`null` when the script dropped the event or threw).
    pub output: Value,
    /// `log()` / `console.*` lines.
    pub logs: Vec<String>,
    /// Lines dropped past the log bound.
    pub dropped_logs: u64,
    /// The error, when the script threw or could not run.
    pub error: Option<ScriptRunError>,
}

/// A script's failure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScriptRunError {
    /// The message.
    pub message: String,
    /// The JavaScript stack, if any.
    pub stack: Option<String>,
    /// The status it threw with (destination scripts: 4xx abort, 5xx retry).
    pub status: Option<u16>,
}

/// Runs `source` (a transformation or a destination script, told by its exports) over
/// `event` on `pool`, as the server would: the engine of `keel transform test` and of the
/// console's transformation editor.
pub async fn run_source(
    pool: &TransformPool,
    scripts_dir: &Path,
    path: &Path,
    source: String,
    event: &Map<String, Value>,
    destination: &Value,
) -> anyhow::Result<ScriptRun> {
    let libraries =
        Arc::new(load_libraries(&scripts_dir.join("libraries")).map_err(anyhow::Error::msg)?);
    let destination = rudder_destination(destination);
    let kind = kind_of(&source);
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("script")
        .to_owned();
    let script = Arc::new(Script::new(&name, path, source, kind, libraries));
    let common = json!({
        "sourceId": event.get("sourceId").cloned().unwrap_or(json!("test-source")),
        "sourceName": "test-source",
        "destinationId": destination["ID"],
        "destinationName": destination["Name"],
        "destinationType": destination["DestinationDefinition"]["Name"],
    });
    let metadata = json!({"messageId": event.get("messageId"), "jobId": 0});
    let items = [CallItem {
        event,
        metadata: &metadata,
    }];
    let mut run = ScriptRun {
        output: Value::Null,
        logs: Vec::new(),
        dropped_logs: 0,
        error: None,
    };
    let output = match pool
        .call(&script, &common, &items, Some(&destination))
        .await
    {
        Ok(o) => o,
        Err(e) => {
            run.error = Some(ScriptRunError {
                message: e.to_string(),
                stack: None,
                status: None,
            });
            return Ok(run);
        }
    };
    run.logs = output.logs;
    run.dropped_logs = output.dropped_logs;
    let shown = |events: Vec<Map<String, Value>>| match events.len() {
        0 => Value::Null,
        1 => Value::Object(events.into_iter().next().unwrap_or_default()),
        _ => Value::Array(events.into_iter().map(Value::Object).collect()),
    };
    match output.results {
        CallResults::Batch(events) => {
            run.output = Value::Array(events.into_iter().map(Value::Object).collect());
        }
        CallResults::PerEvent(mut results) => match results.pop() {
            Some(ItemResult::Out(events)) => run.output = shown(events),
            Some(ItemResult::Failed(e)) => {
                run.error = Some(ScriptRunError {
                    message: e.message,
                    stack: e.stack,
                    status: e.status,
                });
            }
            None => {}
        },
    }
    Ok(run)
}

/// Runs the script; prints the result, or the error and stack (then fails).
pub fn run(config: &KeelSettings, args: &TestRun) -> anyhow::Result<()> {
    let source = std::fs::read_to_string(&args.file)
        .with_context(|| format!("{}: cannot read the script", args.file.display()))?;
    let event = match read_json(&args.event, "event")? {
        Value::Object(m) => m,
        _ => bail!("{}: the event must be a JSON object", args.event.display()),
    };
    let destination = match &args.destination {
        Some(p) => read_json(p, "destination")?,
        None => json!({"id": "test", "name": "test", "config": {},
                    "destinationDefinition": {"name": "TEST"}}),
    };
    let mut settings = config.transform.config(config.allow_private_targets);
    settings.isolates = 1;
    let pool = TransformPool::start(settings).context("starting V8")?;
    let scripts_dir = Path::new(&config.transform.scripts_dir);
    let run = futures::executor::block_on(run_source(
        &pool,
        scripts_dir,
        &args.file,
        source,
        &event,
        &destination,
    ))?;
    for line in &run.logs {
        eprintln!("log: {line}");
    }
    if run.dropped_logs > 0 {
        eprintln!("log: ({} more lines dropped)", run.dropped_logs);
    }
    if let Some(e) = &run.error {
        eprintln!("{}: {}", args.file.display(), e.message);
        if let Some(stack) = &e.stack {
            eprintln!("{stack}");
        }
        if let Some(status) = e.status {
            eprintln!("status: {status}");
        }
        if e.stack.is_some() || e.status.is_some() {
            bail!("the script threw");
        }
        bail!("the script failed");
    }
    println!("{}", serde_json::to_string_pretty(&run.output)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_scripts_are_told_by_their_exports() {
        assert_eq!(
            kind_of("export function process(event, destination) {}"),
            ScriptKind::Destination
        );
        assert_eq!(
            kind_of("export function transformEvent(event) { return event; }"),
            ScriptKind::Transformation
        );
        assert_eq!(
            kind_of("export async function transformBatch(events) { return events; }"),
            ScriptKind::Transformation
        );
    }

    #[test]
    fn workspace_destinations_become_rudderstack_objects() {
        let d = rudder_destination(
            &json!({"id": "d1", "name": "GA", "config": {"apiSecret": "s"},
            "destinationDefinition": {"name": "GA4"}}),
        );
        assert_eq!(d["ID"], "d1");
        assert_eq!(d["Config"]["apiSecret"], "s");
        assert_eq!(d["DestinationDefinition"]["Name"], "GA4");
    }
}
