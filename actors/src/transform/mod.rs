//! JavaScript transformations on V8: a pool of isolates, each on its own OS thread (isolates
//! are `!Send`), fed fairly from one bounded queue per script ([`fair`]: a runaway script
//! holds at most all isolates but one while others have work), one batch of events per
//! call. Scripts are
//! ES modules in RudderStack's shape — user transformations export `transformEvent(event,
//! metadata)` or `transformBatch(events, metadata)`, destination scripts export
//! `process(event, destination)` — and may import libraries by name. Each isolate caches
//! the scripts it compiled, runs each call under a time budget (a watchdog terminates it)
//! and a heap cap, and is recreated after a call it had to stop. This module owns the
//! public side: settings, scripts, calls and their results; [`isolate`] owns V8. Tests
//! may give a pool canned answers for every `fetch` its scripts make ([`mocks`]).

pub mod digest;
mod fair;
mod isolate;
pub mod mocks;

pub use mocks::{FetchMocks, MockExchange};

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::telemetry as t;

/// Pool and per-call limits.
#[derive(Debug, Clone)]
pub struct TransformConfig {
    /// Isolates (OS threads) in the pool.
    pub isolates: usize,
    /// V8 heap cap per isolate, bytes (array buffers count against it too).
    pub heap_limit_bytes: usize,
    /// Time budget of one call (a batch), enforced with `terminate_execution`.
    pub call_timeout: Duration,
    /// Timeout of one `fetch`/`fetchV2` request.
    pub fetch_timeout: Duration,
    /// Requests one call may make with `fetch`/`fetchV2`.
    pub fetch_max_requests: usize,
    /// Response bytes `fetch` keeps.
    pub fetch_max_body: usize,
    /// Let `fetch` reach loopback, private and link-local addresses.
    pub allow_private_targets: bool,
    /// How long the processor waits for a destination script's mapping before it leaves
    /// the events to that destination's router.
    pub mapping_deadline: Duration,
    /// Canned answers for every `fetch`/`fetchV2` (tests: `keel transform test` cases with
    /// `network`); `None` (production) sends real requests.
    pub fetch_mocks: Option<Arc<FetchMocks>>,
}

impl Default for TransformConfig {
    fn default() -> Self {
        Self {
            isolates: 2,
            heap_limit_bytes: 128 << 20,
            call_timeout: Duration::from_secs(4),
            fetch_timeout: Duration::from_secs(5),
            fetch_max_requests: 20,
            fetch_max_body: 1 << 20,
            allow_private_targets: false,
            mapping_deadline: Duration::from_secs(1),
            fetch_mocks: None,
        }
    }
}

/// What a script is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScriptKind {
    /// A user transformation (`transformEvent` / `transformBatch`).
    Transformation,
    /// A destination written as a script (`process`).
    Destination,
}

/// Library name → source (`transformer-scripts/libraries/<name>.js`), importable by name.
pub type Libraries = BTreeMap<String, String>;

/// One script, loaded and ready to be compiled by any isolate.
#[derive(Debug)]
pub struct Script {
    /// Transformation name or destination folder.
    pub name: String,
    /// Where it was read from (shown in stacks and errors).
    pub path: PathBuf,
    /// ES module source.
    pub source: String,
    /// Its role.
    pub kind: ScriptKind,
    /// Libraries it may import.
    pub libraries: Arc<Libraries>,
    id: u64,
}

impl Script {
    /// A script from its source.
    pub fn new(
        name: &str,
        path: &Path,
        source: String,
        kind: ScriptKind,
        libraries: Arc<Libraries>,
    ) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (name, path, &source, kind, &*libraries).hash(&mut h);
        Self {
            name: name.to_owned(),
            path: path.to_owned(),
            source,
            kind,
            libraries,
            id: h.finish(),
        }
    }

    /// Reads the script at `path`; the error names the file.
    pub fn load(
        name: &str,
        path: &Path,
        kind: ScriptKind,
        libraries: Arc<Libraries>,
    ) -> Result<Self, String> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Ok(Self::new(name, path, source, kind, libraries))
    }

    /// Identity of this exact script (name, path, source, libraries): the compile cache key.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Reads every `<name>.js` in `dir` (missing folder: none).
pub fn load_libraries(dir: &Path) -> Result<Libraries, String> {
    let mut libs = Libraries::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(libs),
        Err(e) => return Err(format!("{}: cannot list: {e}", dir.display())),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("js") {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let source = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        libs.insert(name.to_owned(), source);
    }
    Ok(libs)
}

/// One event going into a call. `metadata(event)` returns the call's common metadata
/// (source, destination), the event's `eventName`, `eventType` and `receivedAt`, and this
/// item's own `metadata` members (`messageId`, `jobId`), built only when a script asks.
#[derive(Debug, Clone, Serialize)]
pub struct CallItem<'a> {
    /// The event.
    #[serde(rename = "e")]
    pub event: &'a Map<String, Value>,
    /// Its own metadata members (an object; `null` for none).
    #[serde(rename = "m")]
    pub metadata: &'a Value,
}

/// The JSON a call sends into the isolate.
#[derive(Serialize)]
struct CallInput<'a> {
    common: &'a Value,
    items: &'a [CallItem<'a>],
}

/// An error a script raised (or a reason Keel gave up on its output).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ScriptError {
    /// `Name: message`.
    #[serde(rename = "error")]
    pub message: String,
    /// The script's stack, when it had one.
    #[serde(default)]
    pub stack: Option<String>,
    /// A `status` (or `statusCode`) the thrown error carried.
    #[serde(default)]
    pub status: Option<u16>,
    /// The script declined the event rather than failed on it (an error with `drop: true`,
    /// such as `keel`'s `UnsupportedEventError`): the event is skipped with this message
    /// as the reason, not dead-lettered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop: bool,
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.stack {
            Some(stack) if !stack.is_empty() => f.write_str(stack),
            _ => f.write_str(&self.message),
        }
    }
}

/// The outcome for one input event of a per-event call.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemResult {
    /// What it became: no events (dropped), one, or several (split).
    Out(Vec<Map<String, Value>>),
    /// The script threw for it.
    Failed(ScriptError),
}

/// What a call produced.
#[derive(Debug, Clone, PartialEq)]
pub enum CallResults {
    /// `transformEvent` / `process`: one result per input event, in input order.
    PerEvent(Vec<ItemResult>),
    /// `transformBatch`: the events it returned.
    Batch(Vec<Map<String, Value>>),
}

/// A finished call.
#[derive(Debug, Clone)]
pub struct CallOutput {
    /// The results.
    pub results: CallResults,
    /// Lines the script logged with `log()`/`console.*` (bounded).
    pub logs: Vec<String>,
    /// Lines dropped past the bound.
    pub dropped_logs: u64,
}

/// Why a whole call failed (all its events are dead-lettered with this reason).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The script does not compile, import or export what it must.
    #[error("script {script} cannot be loaded: {message}")]
    Load {
        /// Script path.
        script: String,
        /// Compiler or loader message.
        message: String,
    },
    /// `transformBatch` threw, or the call failed as a whole.
    #[error("{0}")]
    Exception(ScriptError),
    /// The call ran past its time budget and was terminated.
    #[error("the script ran longer than its {0:?} budget and was stopped")]
    Timeout(Duration),
    /// The isolate reached its heap cap and the call was stopped.
    #[error("the script used more than its {0} MB heap cap and was stopped")]
    Heap(usize),
    /// The script returned something that is not an event (or not JSON).
    #[error("invalid script output: {0}")]
    InvalidOutput(String),
    /// The pool is shut down.
    #[error("the transformation pool is unavailable")]
    Unavailable,
}

impl CallError {
    /// Metric label for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            CallError::Load { .. } => "load",
            CallError::Exception(_) => "exception",
            CallError::Timeout(_) => "timeout",
            CallError::Heap(_) => "heap",
            CallError::InvalidOutput(_) => "invalid_output",
            CallError::Unavailable => "unavailable",
        }
    }
}

/// The pool of isolates. Cheap to share (`Arc`); dropping the last handle stops the threads
/// once their queue is empty.
pub struct TransformPool {
    queue: Arc<fair::FairQueue>,
    settings: Arc<TransformConfig>,
}

impl Drop for TransformPool {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl TransformPool {
    /// Starts `settings.isolates` isolate threads.
    pub fn start(settings: TransformConfig) -> std::io::Result<Arc<Self>> {
        let settings = Arc::new(settings);
        let n = settings.isolates.max(1);
        let queue = Arc::new(fair::FairQueue::new(n, n * 4));
        for i in 0..n {
            isolate::spawn(i, queue.clone(), settings.clone())?;
        }
        Ok(Arc::new(Self { queue, settings }))
    }

    /// The limits this pool enforces.
    pub fn config(&self) -> &TransformConfig {
        &self.settings
    }

    /// Runs `script` over `items` on some isolate. `common` is the metadata every item
    /// shares (`sourceId`, `sourceName`, `destinationId`…); `destination` is the second
    /// argument of a destination script's `process` (ignored for transformations).
    pub async fn call(
        &self,
        script: &Arc<Script>,
        common: &Value,
        items: &[CallItem<'_>],
        destination: Option<&Value>,
    ) -> Result<CallOutput, CallError> {
        let started = Instant::now();
        let input = serde_json::to_string(&CallInput { common, items })
            .map_err(|e| CallError::InvalidOutput(format!("cannot encode the input: {e}")))?;
        let result = self
            .call_json(script, input, destination.map(Value::to_string))
            .await
            .and_then(|text| parse_answer(&text, items.len()));
        if items.is_empty() {
            // A compile check, not traffic.
            return result;
        }
        let label = script.name.clone();
        metrics::histogram!(t::TRANSFORM_CALL_DURATION_SECONDS, "script" => label.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(t::TRANSFORM_CALLS_TOTAL, "script" => label.clone()).increment(1);
        metrics::counter!(t::TRANSFORM_EVENTS_IN_TOTAL, "script" => label.clone())
            .increment(items.len() as u64);
        match &result {
            Ok(out) => {
                for line in &out.logs {
                    tracing::debug!(script = %script.name, "script log: {line}");
                }
            }
            Err(e) => {
                metrics::counter!(t::TRANSFORM_ERRORS_TOTAL, "script" => label, "reason" => e.reason())
                    .increment(1);
            }
        }
        result
    }

    /// The isolate's side of a call: `input` is the JSON of `{common, items}` and the
    /// answer is the script's JSON text, undecoded (what one isolate costs, for benchmarks).
    pub async fn call_json(
        &self,
        script: &Arc<Script>,
        input: String,
        destination: Option<String>,
    ) -> Result<String, CallError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = fair::Job {
            script: script.clone(),
            input,
            destination,
            entry: None,
            reply,
        };
        self.queue
            .send(script.id(), job)
            .await
            .map_err(|_| CallError::Unavailable)?;
        rx.await.map_err(|_| CallError::Unavailable)?
    }

    /// Calls the export `entry` of a destination script (`batch`, `batchResponse`, or
    /// `describe`, which reports the script's optional exports) with `args` (spread as its
    /// arguments, then `destination`). Answers the value it returned (awaited) and its logs.
    pub async fn call_export(
        &self,
        script: &Arc<Script>,
        entry: &'static str,
        args: &Value,
        destination: Option<&Value>,
    ) -> Result<ExportOutput, CallError> {
        let started = Instant::now();
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = fair::Job {
            script: script.clone(),
            input: args.to_string(),
            destination: destination.map(Value::to_string),
            entry: Some(entry),
            reply,
        };
        self.queue
            .send(script.id(), job)
            .await
            .map_err(|_| CallError::Unavailable)?;
        let result = rx
            .await
            .map_err(|_| CallError::Unavailable)?
            .and_then(|text| parse_export_answer(&text));
        if entry != "describe" {
            let label = script.name.clone();
            metrics::histogram!(t::TRANSFORM_CALL_DURATION_SECONDS, "script" => label.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(t::TRANSFORM_CALLS_TOTAL, "script" => label.clone()).increment(1);
            if let Err(e) = &result {
                metrics::counter!(t::TRANSFORM_ERRORS_TOTAL, "script" => label, "reason" => e.reason())
                    .increment(1);
            }
        }
        result
    }

    /// Runs one script over one event from synchronous code (the CLI), blocking.
    pub fn call_blocking(
        &self,
        script: &Arc<Script>,
        common: &Value,
        items: &[CallItem<'_>],
        destination: Option<&Value>,
    ) -> Result<CallOutput, CallError> {
        futures::executor::block_on(self.call(script, common, items, destination))
    }
}

/// What a call of a script's named export answered.
#[derive(Debug, Clone)]
pub struct ExportOutput {
    /// The returned value (`null` for `undefined`).
    pub value: Value,
    /// Lines the script logged.
    pub logs: Vec<String>,
}

fn parse_export_answer(text: &str) -> Result<ExportOutput, CallError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        #[serde(default)]
        value: Value,
        #[serde(default)]
        call_error: Option<ScriptError>,
        #[serde(default)]
        logs: Vec<String>,
    }
    let answer: Answer = serde_json::from_str(text)
        .map_err(|e| CallError::InvalidOutput(format!("the answer is not JSON: {e}")))?;
    match answer.call_error {
        Some(e) => Err(CallError::Exception(e)),
        None => Ok(ExportOutput {
            value: answer.value,
            logs: answer.logs,
        }),
    }
}

/// Parses an isolate's JSON answer into results, checking that every output is an object.
fn parse_answer(text: &str, expected: usize) -> Result<CallOutput, CallError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        #[serde(default)]
        items: Option<Vec<RawItem>>,
        #[serde(default)]
        batch: Option<Vec<Value>>,
        #[serde(default)]
        call_error: Option<ScriptError>,
        #[serde(default)]
        logs: Vec<String>,
        #[serde(default)]
        dropped_logs: u64,
    }
    #[derive(Deserialize)]
    struct RawItem {
        #[serde(default)]
        out: Option<Vec<Value>>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        stack: Option<String>,
        #[serde(default)]
        status: Option<u16>,
        #[serde(default)]
        drop: bool,
    }
    let objects = |values: Vec<Value>| -> Result<Vec<Map<String, Value>>, CallError> {
        values
            .into_iter()
            .map(|v| match v {
                Value::Object(m) => Ok(m),
                other => Err(CallError::InvalidOutput(format!(
                    "expected an event object, got {}",
                    truncate(&other.to_string(), 200)
                ))),
            })
            .collect()
    };
    let answer: Answer = serde_json::from_str(text)
        .map_err(|e| CallError::InvalidOutput(format!("the answer is not JSON: {e}")))?;
    if let Some(e) = answer.call_error {
        return Err(CallError::Exception(e));
    }
    let results = if let Some(items) = answer.items {
        if items.len() != expected {
            return Err(CallError::InvalidOutput(format!(
                "{} results for {expected} events",
                items.len()
            )));
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let error = item.error.map(|message| ScriptError {
                message,
                stack: item.stack,
                status: item.status,
                drop: item.drop,
            });
            out.push(match (item.out, error) {
                (Some(values), _) => match objects(values) {
                    Ok(events) => ItemResult::Out(events),
                    Err(e) => ItemResult::Failed(ScriptError {
                        message: e.to_string(),
                        stack: None,
                        status: None,
                        drop: false,
                    }),
                },
                (None, Some(e)) => ItemResult::Failed(e),
                (None, None) => ItemResult::Out(Vec::new()),
            });
        }
        CallResults::PerEvent(out)
    } else {
        CallResults::Batch(objects(answer.batch.unwrap_or_default())?)
    };
    Ok(CallOutput {
        results,
        logs: answer.logs,
        dropped_logs: answer.dropped_logs,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
