//! `keel transform test --destination NAME [--cases DIR]` (and `--all`): runs a destination
//! script's case files through the same code the server uses (the isolate pool,
//! `ScriptDestination`'s `process`, `batch` and `batchResponse`) and prints pass or fail per
//! case, with the differences field by field. A case file is one JSON object:
//!
//! - `description` (required), `source` (where the expected request comes from: a vendor
//!   document, RudderStack's transformer test data);
//! - `config`: the destination's settings (`destination.Config`);
//! - `event` and then `output` (the request `process` returns; an array when it returns
//!   several; `null` for none) or `error` (`{status, message, dropped}`: the status it
//!   throws with, a substring of its message, and whether it is a skip such as an
//!   unsupported event type rather than a failure);
//! - or `events`, optionally `output` (each event's request), and `batch`: what
//!   `batch(requests)` returns (`[{request, events}]`), and `responses`: per batched request
//!   `{response: {status, headers, body}, outcomes: ["delivered" | "retry" | "abort", …]}`,
//!   what `batchResponse` makes of that answer for each event it covers;
//! - `ignore`: JSON pointers left out of the comparison (generated ids, the current time),
//!   relative to the compared value (`output`, or `batch`);
//! - `network`: the vendor API as the script sees it, for scripts that call one with
//!   `fetch`/`fetchV2` while mapping (look-ups): `[{request: {method, url, body?,
//!   headers?}, response: {status, headers?, body}, once?}]`. While the case runs every
//!   request the script makes is answered by the first entry whose method and URL match
//!   (the query in any order) and, when the entry gives them, its body (JSON compared as
//!   JSON, a string as text) and headers (a subset); an entry answers any number of
//!   requests unless it has `"once": true`. A request no entry matches fails at once (the
//!   script's `fetch` throws, naming the method and URL) and fails the case even if the
//!   script caught the error; an entry nothing used is noted. A case with `network` runs on
//!   its own isolate pool; without it, `fetch` is the real one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use assert_json_diff::{assert_json_matches_no_panic, CompareMode, Config, NumericMode};
use keel_actors::destinations::http::Answer;
use keel_actors::destinations::script::ScriptDestination;
use keel_actors::destinations::{BuildEnv, DeliveryOutcome};
use keel_actors::transform::{
    load_libraries, FetchMocks, ItemResult, MockExchange, TransformConfig, TransformPool,
};
use keel_actors::workspace;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::KeelSettings;

/// One case file (see the module comment).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    #[serde(default)]
    #[allow(dead_code)]
    source: Option<String>,
    #[serde(default)]
    config: Map<String, Value>,
    #[serde(default)]
    event: Option<Map<String, Value>>,
    #[serde(default)]
    events: Option<Vec<Map<String, Value>>>,
    #[serde(default, deserialize_with = "present")]
    output: Option<Value>,
    #[serde(default)]
    error: Option<ExpectedError>,
    #[serde(default)]
    batch: Option<Value>,
    #[serde(default)]
    responses: Vec<ResponseCase>,
    #[serde(default)]
    ignore: Vec<String>,
    #[serde(default)]
    network: Option<Vec<MockExchange>>,
}

/// `Some(Value::Null)` for an explicit `null` (absent stays `None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedError {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    dropped: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseCase {
    response: ResponseSpec,
    outcomes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseSpec {
    status: u16,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    body: Value,
}

/// What to run.
pub struct CaseRun {
    /// Destination folder names (case-insensitive); empty with `all`.
    pub destinations: Vec<String>,
    /// Case folder (default `<scripts_dir>/destinations/<name>/cases`); one destination only.
    pub cases: Option<PathBuf>,
    /// Every destination folder that has a `cases` folder.
    pub all: bool,
}

/// Totals of a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
}

/// Runs the cases and prints one line per case (and the differences of failures) on
/// stdout; fails when any case fails or a destination has no cases.
pub fn run(config: &KeelSettings, args: &CaseRun) -> anyhow::Result<Totals> {
    let scripts_dir = PathBuf::from(&config.transform.scripts_dir);
    let mut names = args.destinations.clone();
    if args.all {
        names = keel_actors::destinations::catalogue::script_kinds(&scripts_dir)
            .into_iter()
            .filter(|k| {
                let env = env_for(config, &scripts_dir, None);
                keel_actors::destinations::catalogue::destination_script(&env.scripts_dir, k)
                    .is_some_and(|(_, p)| p.with_file_name("cases").is_dir())
            })
            .collect();
    }
    if names.is_empty() {
        bail!("name a destination (--destination NAME) or pass --all");
    }
    if args.cases.is_some() && names.len() != 1 {
        bail!("--cases goes with exactly one --destination");
    }
    let mut settings = config.transform.config(config.allow_private_targets);
    settings.isolates = 1;
    let pool = TransformPool::start(settings.clone()).context("starting V8")?;
    let env = env_for(config, &scripts_dir, Some(pool));
    let runner = Runner {
        config,
        scripts_dir: &scripts_dir,
        settings: &settings,
        env: &env,
    };
    let libraries =
        Arc::new(load_libraries(&scripts_dir.join("libraries")).map_err(anyhow::Error::msg)?);
    let mut totals = Totals::default();
    let mut empty = Vec::new();
    for name in &names {
        let Some((folder, script)) =
            keel_actors::destinations::catalogue::destination_script(&env.scripts_dir, name)
        else {
            bail!(
                "{}: no destination script {name:?} (folders: {})",
                scripts_dir.join("destinations").display(),
                keel_actors::destinations::catalogue::script_kinds(&scripts_dir).join(", ")
            );
        };
        let dir = match &args.cases {
            Some(d) => d.clone(),
            None => script.with_file_name("cases"),
        };
        let files = case_files(&dir)?;
        if files.is_empty() {
            empty.push(format!("{folder}: no case files in {}", dir.display()));
            continue;
        }
        let (mut passed, mut failed) = (0, 0);
        for file in files {
            let shown = format!(
                "{folder}/{}",
                file.file_name().unwrap_or_default().to_string_lossy()
            );
            match runner.run_case(&libraries, &folder, &script, &file) {
                Ok(outcome) => {
                    let Outcome {
                        description,
                        problems,
                        notes,
                    } = outcome;
                    if problems.is_empty() {
                        passed += 1;
                        println!("PASS  {shown}  {description}");
                    } else {
                        failed += 1;
                        println!("FAIL  {shown}  {description}");
                    }
                    for p in problems {
                        for line in p.lines() {
                            println!("      {line}");
                        }
                    }
                    for n in notes {
                        println!("      note: {n}");
                    }
                }
                Err(e) => {
                    failed += 1;
                    println!("FAIL  {shown}  {e:#}");
                }
            }
        }
        println!("{folder}: {passed} passed, {failed} failed");
        totals.passed += passed;
        totals.failed += failed;
    }
    if names.len() > 1 {
        println!(
            "all destinations: {} passed, {} failed",
            totals.passed, totals.failed
        );
    }
    for line in &empty {
        println!("{line}");
    }
    if totals.failed > 0 || !empty.is_empty() {
        bail!("{} case(s) failed", totals.failed + empty.len());
    }
    Ok(totals)
}

fn env_for(
    config: &KeelSettings,
    scripts_dir: &Path,
    pool: Option<Arc<TransformPool>>,
) -> BuildEnv {
    let mut env = crate::config::build_env(config, pool);
    env.scripts_dir = scripts_dir.to_owned();
    env
}

fn case_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list", dir.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// What one case came to.
struct Outcome {
    description: String,
    /// What differs (none = pass).
    problems: Vec<String>,
    /// Remarks that do not fail the case (unused `network` entries).
    notes: Vec<String>,
}

/// What running a case needs: the shared pool's environment, and what it takes to start a
/// pool of a case's own (cases with `network`).
struct Runner<'a> {
    config: &'a KeelSettings,
    scripts_dir: &'a Path,
    settings: &'a TransformConfig,
    env: &'a BuildEnv,
}

impl Runner<'_> {
    /// Reads and runs one case file, on a pool answering its `network` when it has one.
    fn run_case(
        &self,
        libraries: &Arc<keel_actors::transform::Libraries>,
        folder: &str,
        script: &Path,
        file: &Path,
    ) -> anyhow::Result<Outcome> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("{}: cannot read", file.display()))?;
        let mut case: Case = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a case file", file.display()))?;
        let Some(network) = case.network.take() else {
            let problems = run_case(self.env, libraries, folder, script, file, &case)?;
            return Ok(Outcome {
                description: case.description,
                problems,
                notes: Vec::new(),
            });
        };
        let mocks = Arc::new(FetchMocks::new(network));
        let mut settings = self.settings.clone();
        settings.fetch_mocks = Some(mocks.clone());
        let pool = TransformPool::start(settings).context("starting V8")?;
        let env = env_for(self.config, self.scripts_dir, Some(pool));
        let mut problems = run_case(&env, libraries, folder, script, file, &case)?;
        for request in mocks.unmatched() {
            problems.push(format!("no `network` entry answers {request}"));
        }
        let notes = mocks
            .unused()
            .into_iter()
            .map(|i| format!("network[{i}] answered no request"))
            .collect();
        Ok(Outcome {
            description: case.description,
            problems,
            notes,
        })
    }
}

/// Runs one case on `env`'s pool: the problems found (none = pass).
fn run_case(
    env: &BuildEnv,
    libraries: &Arc<keel_actors::transform::Libraries>,
    folder: &str,
    script: &Path,
    file: &Path,
    case: &Case,
) -> anyhow::Result<Vec<String>> {
    let dest: workspace::Destination = serde_json::from_value(json!({
        "id": "case", "name": case.description, "enabled": true, "config": case.config,
        "destinationDefinition": {"name": folder.to_ascii_uppercase()},
    }))
    .context("destination")?;
    let kind = ScriptDestination::new(&dest, folder, script, env, libraries)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let events: Vec<&Map<String, Value>> = match (&case.event, &case.events) {
        (Some(e), None) => vec![e],
        (None, Some(list)) if !list.is_empty() => list.iter().collect(),
        _ => bail!(
            "{}: give either `event` or a non-empty `events`",
            file.display()
        ),
    };
    let single = case.event.is_some();
    if single && (case.batch.is_some() || !case.responses.is_empty()) {
        bail!(
            "{}: `batch` and `responses` go with `events`",
            file.display()
        );
    }
    let results = futures::executor::block_on(kind.process(&events))
        .map_err(|e| anyhow::anyhow!("process() failed as a whole: {e}"))?;
    let mut problems = Vec::new();
    let mut requests: Vec<Value> = Vec::new();
    let mut per_event: Vec<Value> = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match (r, &case.error) {
            (ItemResult::Failed(e), Some(want)) if single => {
                if want.status.is_some() && want.status != e.status {
                    problems.push(format!(
                        "threw with status {:?}, want {:?}: {}",
                        e.status, want.status, e.message
                    ));
                }
                if let Some(m) = &want.message {
                    if !e.message.contains(m.as_str()) {
                        problems.push(format!(
                            "threw {:?}, want a message containing {m:?}",
                            e.message
                        ));
                    }
                }
                if want.dropped != e.drop {
                    problems.push(if want.dropped {
                        format!(
                            "threw a failure, want a skip (UnsupportedEventError): {}",
                            e.message
                        )
                    } else {
                        format!("threw a skip, want a failure: {}", e.message)
                    });
                }
            }
            (ItemResult::Failed(e), _) => {
                problems.push(format!("event {i}: process() threw: {e}"));
            }
            (ItemResult::Out(out), Some(_)) if single => {
                problems.push(format!(
                    "returned {}, want an error",
                    serde_json::to_string(&out).unwrap_or_default()
                ));
            }
            (ItemResult::Out(out), _) => {
                let shown = match out.len() {
                    0 => Value::Null,
                    1 => Value::Object(out[0].clone()),
                    _ => Value::Array(out.iter().cloned().map(Value::Object).collect()),
                };
                per_event.push(shown);
                requests.extend(out.into_iter().map(Value::Object));
            }
        }
    }
    if case.error.is_none() && case.output.is_none() && case.batch.is_none() {
        bail!(
            "{}: expect something: `output`, `error` or `batch`",
            file.display()
        );
    }
    if let Some(want) = &case.output {
        let got = if single {
            per_event.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(per_event)
        };
        // `ignore` points into the batch output when there is one.
        let ignore: &[String] = if case.batch.is_some() {
            &[]
        } else {
            &case.ignore
        };
        compare(&got, want, ignore, &mut problems);
    }
    if let Some(want) = &case.batch {
        if problems.is_empty() {
            match futures::executor::block_on(kind.batch(&requests)) {
                Err(f) => problems.push(format!("batch() failed: {}", f.message())),
                Ok(batched) => {
                    let got = Value::Array(
                        batched
                            .iter()
                            .map(|b| json!({"request": b.request, "events": b.events}))
                            .collect(),
                    );
                    compare(&got, want, &case.ignore, &mut problems);
                    check_responses(&kind, case, &batched, &requests, &mut problems);
                }
            }
        }
    }
    Ok(problems)
}

fn check_responses(
    kind: &ScriptDestination,
    case: &Case,
    batched: &[keel_actors::destinations::script::BatchedRequest],
    requests: &[Value],
    problems: &mut Vec<String>,
) {
    for (n, rc) in case.responses.iter().enumerate() {
        let Some(b) = batched.get(n) else {
            problems.push(format!(
                "responses[{n}]: batch() made only {} requests",
                batched.len()
            ));
            return;
        };
        let answer = Answer {
            status: rc.response.status,
            headers: rc.response.headers.clone(),
            body: match &rc.response.body {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            retry_after: None,
        };
        let covered: Vec<&Value> = b.events.iter().filter_map(|&i| requests.get(i)).collect();
        let outcomes = match futures::executor::block_on(kind.batch_response(&answer, &covered)) {
            Ok(o) => o,
            Err(f) => {
                problems.push(format!(
                    "responses[{n}]: batchResponse() failed: {}",
                    f.message()
                ));
                continue;
            }
        };
        let status_outcome = answer.outcome();
        let got: Vec<&str> = outcomes
            .iter()
            .map(|o| match o.as_ref().unwrap_or(&status_outcome) {
                DeliveryOutcome::Delivered => "delivered",
                DeliveryOutcome::Retry(_) => "retry",
                DeliveryOutcome::Abort(_) => "abort",
            })
            .collect();
        if got != rc.outcomes {
            problems.push(format!(
                "responses[{n}]: outcomes {got:?}, want {:?}",
                rc.outcomes
            ));
        }
    }
}

/// Compares `got` with `want` (numbers by value), leaving out the `ignore` pointers.
fn compare(got: &Value, want: &Value, ignore: &[String], problems: &mut Vec<String>) {
    let (mut got, mut want) = (got.clone(), want.clone());
    for pointer in ignore {
        remove_pointer(&mut got, pointer);
        remove_pointer(&mut want, pointer);
    }
    let config = Config::new(CompareMode::Strict).numeric_mode(NumericMode::AssumeFloat);
    if let Err(diff) = assert_json_matches_no_panic(&got, &want, config) {
        problems.push(format!(
            "{diff}\n(got: {})",
            serde_json::to_string(&got).unwrap_or_default()
        ));
    }
}

fn remove_pointer(v: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match v.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.remove(&last);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = last.parse::<usize>() {
                if i < a.len() {
                    a[i] = Value::Null;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_pointers_leave_the_comparison() {
        let mut problems = Vec::new();
        compare(
            &json!({"a": 1, "t": 5, "l": [1, 2]}),
            &json!({"a": 1.0, "t": 9, "l": [1, 3]}),
            &["/t".into(), "/l/1".into()],
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        compare(&json!({"a": 1}), &json!({"a": 2}), &[], &mut problems);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains(".a"), "{}", problems[0]);
    }
}
